//! `obsbox demo`: every service as a child process.
