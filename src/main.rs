//! `obsbox`: OTLP collector, embedded telemetry store and query UI in one binary.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use obsbox::{Config, Obsbox};
use obsbox_demo::config::LoadArgs;
use obsbox_demo::faults::{FaultArgs, FaultSettings};
use obsbox_demo::launcher::{Demo, DemoOptions};
use obsbox_demo::{ServiceConfig, ServiceName};

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
    /// Directory of OpenSLO YAML files to evaluate (reloaded on change and on SIGHUP).
    #[arg(long, env = "OBSBOX_SLO_DIR")]
    slo_dir: Option<PathBuf>,
    /// File of tokens OTLP clients must send (`Authorization: Bearer <token>`), one per line. A
    /// single token can also come from $OBSBOX_INGEST_TOKEN (never a flag: argv is public).
    #[arg(long, env = "OBSBOX_INGEST_TOKEN_FILE")]
    ingest_token_file: Option<PathBuf>,
    /// File of tokens the UI and query APIs require (Bearer, or Basic with the token as
    /// password), one per line. A single token can also come from $OBSBOX_QUERY_TOKEN.
    #[arg(long, env = "OBSBOX_QUERY_TOKEN_FILE")]
    query_token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// SLO tools: check a directory of OpenSLO files, write Prometheus rules for them.
    Slo {
        #[command(subcommand)]
        action: SloAction,
    },
    /// Runs obsbox with the demo shop: every demo service as a child process, and a load generator.
    Demo(Box<DemoArgs>),
    /// Runs one demo service (what `obsbox demo` starts; also one per container).
    #[command(hide = true)]
    DemoService {
        #[arg(value_enum)]
        service: ServiceName,
        #[command(flatten)]
        config: Box<ServiceConfig>,
    },
}

#[derive(Debug, Subcommand)]
enum SloAction {
    /// Loads every SLO file of the directory and reports each SLO or each problem (file, line,
    /// field); exits with status 1 when a file is invalid.
    Check {
        /// Directory of OpenSLO YAML files.
        #[arg(long, default_value = "slos")]
        dir: PathBuf,
    },
    /// Writes Prometheus recording and alerting rules that alert as obsbox does, and optionally
    /// `promtool test rules` fixtures proving each alert tier fires on the expected input.
    Rules {
        /// Directory of OpenSLO YAML files.
        #[arg(long, default_value = "slos")]
        dir: PathBuf,
        /// Rule file to write (`-`: standard output).
        #[arg(long, default_value = "-")]
        out: PathBuf,
        /// Also write a `promtool test rules` file here (it refers to the rule file by name).
        #[arg(long)]
        tests: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct DemoArgs {
    #[command(subcommand)]
    action: Option<DemoAction>,
    /// Port of the gateway; the other services take the next ones (0: free ports).
    #[arg(long, default_value_t = 8080)]
    base_port: u16,
    /// Instances of the catalog service (the gateway balances over them).
    #[arg(long, default_value_t = 2)]
    catalog_instances: u32,
    /// RabbitMQ URL for the order events; without it they are delivered over HTTP.
    #[arg(long, env = "OBSBOX_DEMO_AMQP_URL")]
    amqp_url: Option<String>,
    /// Stop everything after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Start no load generator.
    #[arg(long)]
    no_load: bool,
    /// Fault a service starts with: SERVICE:KEY=VALUE[,KEY=VALUE] with keys latency, error-rate,
    /// endpoint, provider-outage, broker-down (e.g. payments:error-rate=0.3,latency=200ms).
    #[arg(long = "fault", value_parser = obsbox_demo::launcher::parse_fault_spec)]
    faults: Vec<(ServiceName, FaultArgs)>,
    /// SLO time compression: the demo's SLO windows, alert windows and evaluation interval are
    /// divided by this (60: a 30-day window lasts 12 hours, the 1 h page window 1 minute), so
    /// an injected fault pages within a minute. Default: `slo.time_scale` if set, else 60.
    #[arg(long)]
    slo_time_scale: Option<u32>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Subcommand)]
enum DemoAction {
    /// Shows or changes the faults of a running demo's service (every instance of it).
    Faults {
        #[command(subcommand)]
        action: FaultsAction,
    },
}

#[derive(Debug, Subcommand)]
enum FaultsAction {
    /// Replaces the service's faults with the ones given.
    Set {
        #[arg(value_enum)]
        service: ServiceName,
        #[command(flatten)]
        faults: FaultArgs,
        /// The demo's registry.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        registry: String,
    },
    /// Shows the service's faults.
    Get {
        #[arg(value_enum)]
        service: ServiceName,
        /// The demo's registry.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        registry: String,
    },
    /// Removes every fault of the service.
    Clear {
        #[arg(value_enum)]
        service: ServiceName,
        /// The demo's registry.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        registry: String,
    },
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
        if let Some(v) = &self.slo_dir {
            c.slo.dir = Some(v.clone());
        }
        if let Some(v) = &self.ingest_token_file {
            c.auth.ingest_token_file = Some(v.clone());
        }
        if let Some(v) = &self.query_token_file {
            c.auth.query_token_file = Some(v.clone());
        }
        if let Some(t) = token_from_env("OBSBOX_INGEST_TOKEN")? {
            c.auth.ingest_token = Some(t);
        }
        if let Some(t) = token_from_env("OBSBOX_QUERY_TOKEN")? {
            c.auth.query_token = Some(t);
        }
        if let Some(v) = &self.fsync {
            c.storage.fsync =
                if v == "group" { obsbox::storage::FsyncPolicy::Group } else { obsbox::storage::FsyncPolicy::Interval };
        }
        if c.cluster.role != obsbox::Role::All {
            c.object_store = c.object_store.with_env();
        }
        c.validate()?;
        Ok(c)
    }
}

/// A token from the environment. Set but empty is an error, not "no token": a deployment that
/// means to set one (`OBSBOX_INGEST_TOKEN=${TOKEN}` with `TOKEN` unset) must not start open.
fn token_from_env(var: &str) -> anyhow::Result<Option<obsbox_net::Token>> {
    match std::env::var(var) {
        Ok(v) if v.trim().is_empty() => anyhow::bail!("{var} is set but empty"),
        Ok(v) => Ok(Some(obsbox_net::Token::new(v.trim()))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!("{var} is not valid UTF-8"),
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
    // Rust allocations go to mimalloc (src/lib.rs); the C libraries (zstd) still use glibc
    // malloc, which gives every thread that allocates its own arena. When glibc held everything,
    // that multiplied resident memory under load (743 -> 468 MiB with two). Two arenas suffice.
    // SAFETY: mallopt only tunes the allocator, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let mut cli = Cli::parse();
    if let Some(Command::DemoService { .. }) = &cli.command
        && let Some(Command::DemoService { service, config }) = cli.command.take()
    {
        // A demo service sets up its own tracing subscriber (OpenTelemetry plus stderr).
        let runtime =
            tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
        return runtime.block_on(obsbox_demo::services::run(service, *config)).map_err(Into::into);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OBSBOX_LOG").unwrap_or_else(|_| "info,tantivy=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(Command::Slo { .. }) = &cli.command
        && let Some(Command::Slo { action }) = cli.command.take()
    {
        return slo_tool(action);
    }
    let config = cli.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    match cli.command {
        None => runtime.block_on(run(config)),
        Some(Command::Demo(mut args)) => match args.action.take() {
            Some(DemoAction::Faults { action }) => runtime.block_on(faults(action)),
            None => runtime.block_on(demo(config, *args)),
        },
        Some(Command::DemoService { .. }) => unreachable!("handled before the subscriber is set up"),
        Some(Command::Slo { .. }) => unreachable!("handled before the configuration is read"),
    }
}

/// `obsbox slo check|rules`: offline, no store or listener involved.
fn slo_tool(action: SloAction) -> anyhow::Result<()> {
    let dir = match &action {
        SloAction::Check { dir } | SloAction::Rules { dir, .. } => dir.clone(),
    };
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory of SLO files", dir.display());
    }
    let mut defs = obsbox_slo::Definitions::new(&dir);
    defs.reload();
    let (slos, errors) = (defs.slos(), defs.errors());
    for e in &errors {
        eprintln!("{e}");
    }
    if !errors.is_empty() {
        anyhow::bail!("{} problem(s) in {}", errors.len(), dir.display());
    }
    match action {
        SloAction::Check { .. } => {
            for s in &slos {
                println!("{}\t{}\t{}:{}", s.name, s.service, s.source.file.display(), s.source.line);
            }
            eprintln!("{} SLO(s) in {}", slos.len(), dir.display());
        }
        SloAction::Rules { out, tests, .. } => {
            let rules = obsbox_slo::prometheus_rules(&slos);
            if out.as_os_str() == "-" {
                print!("{rules}");
            } else {
                std::fs::write(&out, rules).with_context(|| format!("cannot write {}", out.display()))?;
            }
            if let Some(tests) = tests {
                let rules_name = if out.as_os_str() == "-" {
                    anyhow::bail!("--tests needs --out: the test file names the rule file");
                } else {
                    out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
                };
                let text = obsbox_slo::promtool_tests(&slos, &rules_name)?;
                std::fs::write(&tests, text).with_context(|| format!("cannot write {}", tests.display()))?;
            }
        }
    }
    Ok(())
}

/// `obsbox demo faults ...`: talks to every instance of the service, found through the registry.
async fn faults(action: FaultsAction) -> anyhow::Result<()> {
    let (service, registry, settings) = match action {
        FaultsAction::Set { service, faults, registry } => {
            (service, registry, Some(faults.settings().map_err(anyhow::Error::msg)?))
        }
        FaultsAction::Get { service, registry } => (service, registry, None),
        FaultsAction::Clear { service, registry } => (service, registry, Some(FaultSettings::default())),
    };
    let answers = obsbox_demo::faults::remote(&registry, service.as_str(), settings.as_ref())
        .await
        .with_context(|| format!("cannot reach {service} through the registry at {registry}"))?;
    for (instance, settings) in answers {
        println!("{} {}", instance.instance_id, serde_json::to_string(&settings)?);
    }
    Ok(())
}

/// The demo's SLOs (`slos/` in the repository), written to `<data>/demo/slos/` when no SLO
/// directory is configured, so `obsbox demo` evaluates them from any working directory.
const DEMO_SLOS: &[(&str, &str)] = &[
    ("alerting.yaml", include_str!("../slos/alerting.yaml")),
    ("catalog-latency.yaml", include_str!("../slos/catalog-latency.yaml")),
    ("checkout-latency.yaml", include_str!("../slos/checkout-latency.yaml")),
    ("gateway-availability.yaml", include_str!("../slos/gateway-availability.yaml")),
    ("payments-availability.yaml", include_str!("../slos/payments-availability.yaml")),
];

/// `obsbox demo`: obsbox in this process, the demo services as children exporting to it.
async fn demo(mut config: Config, args: DemoArgs) -> anyhow::Result<()> {
    if config.slo.dir.is_none() {
        let dir = config.storage.data_dir.join("demo").join("slos");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (name, text) in DEMO_SLOS {
            std::fs::write(dir.join(name), text).with_context(|| format!("cannot write {}", dir.display()))?;
        }
        config.slo.dir = Some(dir);
    }
    config.slo.time_scale =
        args.slo_time_scale.unwrap_or(if config.slo.time_scale != 1 { config.slo.time_scale } else { 60 });
    config.validate()?;
    let mut obsbox = Obsbox::start(config.clone()).await?;
    let grpc = obsbox.otlp_grpc_addr().context("obsbox demo needs a role that takes OTLP (all)")?;
    let host = if grpc.ip().is_unspecified() { "127.0.0.1".to_owned() } else { grpc.ip().to_string() };
    let ui_addr = obsbox.http_addr();
    let ui_host = if ui_addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { ui_addr.ip().to_string() };
    let options = DemoOptions {
        exe: std::env::current_exe().context("cannot find this binary to start the demo services")?,
        base_port: args.base_port,
        data_dir: config.storage.data_dir.join("demo"),
        otlp_endpoint: format!("http://{host}:{}", grpc.port()),
        catalog_instances: args.catalog_instances,
        amqp_url: args.amqp_url,
        load: (!args.no_load).then_some(args.load),
        faults: args.faults,
    };
    let mut demo = match Demo::start(options).await {
        Ok(d) => d,
        Err(e) => {
            obsbox.shutdown().await?;
            return Err(anyhow::Error::new(e).context("starting the demo services"));
        }
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", listening_line(&obsbox))?;
        writeln!(out, "demo gateway={} registry={}", demo.gateway_url, demo.registry_url)?;
        writeln!(out)?;
        writeln!(out, "obsbox demo is running:")?;
        writeln!(out, "  UI (traces, logs)   http://{ui_host}:{}/", ui_addr.port())?;
        writeln!(
            out,
            "  SLOs                http://{ui_host}:{}/slos  (time runs {}x fast: a 30-day window lasts {} h)",
            ui_addr.port(),
            config.slo.time_scale,
            30 * 24 / config.slo.time_scale
        )?;
        writeln!(
            out,
            "  shop gateway        {}  (POST /login {{\"user\":\"ann\",\"password\":\"demo\"}}, then /api/products with the token)",
            demo.gateway_url
        )?;
        writeln!(out, "  service registry    {}/v1/services", demo.registry_url)?;
        writeln!(out, "  service logs        {}", demo.log_dir.display())?;
        writeln!(
            out,
            "  inject a fault      obsbox demo faults set payments --error-rate 0.5 --registry {}",
            demo.registry_url
        )?;
        writeln!(out, "Ctrl-C stops everything.")?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let deadline = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let result = loop {
        tokio::select! {
            r = obsbox.wait() => break r,
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted, stopping the demo"); break Ok(()) }
            _ = term.recv() => { tracing::info!("terminated, stopping the demo"); break Ok(()) }
            _ = &mut deadline => { tracing::info!("demo duration over, stopping"); break Ok(()) }
            _ = hup.recv() => { tracing::info!("SIGHUP: reloading the SLO definitions"); obsbox.reload_slos() }
            exited = demo.exited() => {
                if exited.service == ServiceName::Loadgen && exited.status.success() {
                    tracing::info!("load generator finished");
                } else {
                    tracing::error!(instance = %exited.instance, status = %exited.status, logs = %demo.log_dir.display(), "demo service exited");
                }
            }
        }
    };
    // Children first: they flush their telemetry to the collector on the way out.
    demo.stop().await;
    obsbox.shutdown().await?;
    tracing::info!("stopped");
    result
}

/// `listening otlp_grpc=IP:PORT otlp_http=IP:PORT http=IP:PORT`, without the OTLP listeners a
/// role does not open: what scripts and tests wait for on stdout.
fn listening_line(obsbox: &Obsbox) -> String {
    let mut line = String::from("listening");
    for (name, addr) in [("otlp_grpc", obsbox.otlp_grpc_addr()), ("otlp_http", obsbox.otlp_http_addr())] {
        if let Some(addr) = addr {
            line.push_str(&format!(" {name}={addr}"));
        }
    }
    line.push_str(&format!(" http={}", obsbox.http_addr()));
    line
}

async fn run(config: Config) -> anyhow::Result<()> {
    let mut obsbox = Obsbox::start(config.clone()).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", listening_line(&obsbox))?;
        out.flush()?;
    }
    tracing::info!(
        data_dir = %config.storage.data_dir.display(),
        ui = %format!("http://{}/", obsbox.http_addr()),
        "obsbox started"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            r = obsbox.wait() => { r?; break }
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted, shutting down"); break }
            _ = term.recv() => { tracing::info!("terminated, shutting down"); break }
            _ = hup.recv() => { tracing::info!("SIGHUP: reloading the SLO definitions"); obsbox.reload_slos() }
        }
    }
    obsbox.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
