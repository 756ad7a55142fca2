//! `obsbox`: OTLP collector, embedded telemetry store and query UI in one binary.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use obsbox::{Config, Obsbox};

/// Flags override the config file; each has an `OBSBOX_*` environment variable.
#[derive(Debug, Parser)]
#[command(name = "obsbox", version, about = "OTLP collector, embedded telemetry store and query UI in one binary")]
struct Cli {
    /// TOML configuration file (see obsbox.example.toml).
    #[arg(long, env = "OBSBOX_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory of the embedded store.
    #[arg(long, env = "OBSBOX_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// OTLP/gRPC listen address.
    #[arg(long, env = "OBSBOX_OTLP_GRPC_ADDR")]
    otlp_grpc_addr: Option<String>,
    /// OTLP/HTTP listen address.
    #[arg(long, env = "OBSBOX_OTLP_HTTP_ADDR")]
    otlp_http_addr: Option<String>,
    /// UI, query APIs and /metrics listen address.
    #[arg(long, env = "OBSBOX_HTTP_ADDR")]
    http_addr: Option<String>,
    /// Delete data older than this (e.g. 7d, 12h).
    #[arg(long, env = "OBSBOX_RETENTION", value_parser = humantime::parse_duration)]
    retention: Option<std::time::Duration>,
    /// Delete the oldest data when the store exceeds this many bytes (0: no limit).
    #[arg(long, env = "OBSBOX_MAX_DISK_BYTES")]
    max_disk_bytes: Option<u64>,
    /// WAL fsync policy: group (fsync before ack) or interval.
    #[arg(long, env = "OBSBOX_FSYNC", value_parser = ["group", "interval"])]
    fsync: Option<String>,
}

impl Cli {
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = &self.data_dir {
            c.storage.data_dir = v.clone();
        }
        if let Some(v) = &self.otlp_grpc_addr {
            c.listen.otlp_grpc = v.clone();
        }
        if let Some(v) = &self.otlp_http_addr {
            c.listen.otlp_http = v.clone();
        }
        if let Some(v) = &self.http_addr {
            c.listen.http = v.clone();
        }
        if let Some(v) = self.retention {
            c.storage.retention = v;
        }
        if let Some(v) = self.max_disk_bytes {
            c.storage.max_disk_bytes = v;
        }
        if let Some(v) = &self.fsync {
            c.storage.fsync =
                if v == "group" { obsbox::storage::FsyncPolicy::Group } else { obsbox::storage::FsyncPolicy::Interval };
        }
        c.validate()?;
        Ok(c)
    }
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain names the offending key or address; a backtrace would bury it.
            eprintln!("obsbox: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    // glibc gives every thread that allocates its own arena; with tantivy's and tokio's threads
    // that multiplies resident memory under load (measured: 743 -> 468 MiB). Two arenas suffice.
    // SAFETY: mallopt only tunes the allocator, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OBSBOX_LOG").unwrap_or_else(|_| "info,tantivy=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = cli.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let mut obsbox = Obsbox::start(config.clone()).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "listening otlp_grpc={} otlp_http={} http={}",
            obsbox.otlp_grpc_addr(),
            obsbox.otlp_http_addr(),
            obsbox.http_addr()
        )?;
        out.flush()?;
    }
    tracing::info!(
        data_dir = %config.storage.data_dir.display(),
        ui = %format!("http://{}/", obsbox.http_addr()),
        "obsbox started"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = obsbox.wait() => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
        _ = term.recv() => tracing::info!("terminated, shutting down"),
    }
    obsbox.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}
