#!/usr/bin/env python3
"""Cold start and idle memory of the obsbox binary.

Starts target/release/obsbox on a fresh data dir (then twice more on the same dir), measures the
time from exec until the OTLP/gRPC port accepts connections, and the RSS after 3 s idle.
Usage: cargo build --release && python3 benches/startup.py
"""
import os
import socket
import subprocess
import tempfile
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
binary = os.path.join(root, "target", "release", "obsbox")
with tempfile.TemporaryDirectory() as d:
    for run in range(3):
        started = time.time()
        p = subprocess.Popen(
            [binary, "--data-dir", os.path.join(d, "data"), "--otlp-grpc-addr", "127.0.0.1:34317",
             "--otlp-http-addr", "127.0.0.1:34318", "--http-addr", "127.0.0.1:36686"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = started + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", 34317), timeout=0.05).close()
                break
            except OSError:
                time.sleep(0.002)
        ms = (time.time() - started) * 1000
        time.sleep(3)
        with open(f"/proc/{p.pid}/status") as f:
            rss = next(l.split()[1] for l in f if l.startswith("VmRSS"))
        print(f"run {run} ({'fresh' if run == 0 else 'reopened'} data dir): accepting OTLP after {ms:.0f} ms; "
              f"idle RSS {int(rss) / 1024:.1f} MiB")
        p.terminate()
        p.wait()
