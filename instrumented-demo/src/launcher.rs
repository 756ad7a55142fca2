//! `obsbox demo`: every demo service as a child process of one binary, and the load generator.
//!
//! [`Demo::start`] re-executes the binary (`<exe> demo-service <name> ...`) once per service
//! (two catalog instances by default), the registry first, each pointed at the registry and at
//! the OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`). A child prints `listening http://ADDR` on
//! stdout once it serves; its stderr (and the rest of its stdout) goes to
//! `<data_dir>/logs/<instance>.log`. Children get SIGTERM when the launcher's thread dies
//! (`PR_SET_PDEATHSIG`), so a killed parent leaves none behind. [`Demo::stop`] sends SIGTERM
//! (load generator first, registry last), waits for each, and kills those that do not stop.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::ServiceName;
use crate::config::LoadArgs;
use crate::faults::FaultArgs;
use crate::{Error, Result};

/// How long a child may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What to start.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The binary to re-execute (its `demo-service` subcommand runs a service).
    pub exe: PathBuf,
    /// The gateway's port; the other services take the next ones. 0: every service on a free port.
    pub base_port: u16,
    /// Where the services keep their databases, and their logs under `logs/`.
    pub data_dir: PathBuf,
    /// OTLP/gRPC endpoint every child exports to (`http://host:port`).
    pub otlp_endpoint: String,
    /// Instances of the catalog (the gateway balances over them).
    pub catalog_instances: u32,
    /// RabbitMQ URL for the event path; none: events go over HTTP.
    pub amqp_url: Option<String>,
    /// Load generator settings; `None`: no load generator.
    pub load: Option<LoadArgs>,
    /// Faults each service starts with.
    pub faults: Vec<(ServiceName, FaultArgs)>,
}

/// A started child.
struct Proc {
    instance: String,
    service: ServiceName,
    child: Child,
}

/// The running demo.
pub struct Demo {
    procs: Vec<Proc>,
    /// The gateway's URL.
    pub gateway_url: String,
    /// The registry's URL.
    pub registry_url: String,
    /// Directory of the children's logs.
    pub log_dir: PathBuf,
}

/// A child that stopped.
#[derive(Debug)]
pub struct Exited {
    /// Its instance id.
    pub instance: String,
    /// Which service.
    pub service: ServiceName,
    /// How it ended.
    pub status: std::process::ExitStatus,
}

/// Parses `SERVICE:KEY=VALUE[,KEY=VALUE...]` (keys `latency`, `error-rate`, `endpoint`,
/// `provider-outage`, `broker-down`), e.g. `payments:error-rate=0.3,latency=200ms`.
pub fn parse_fault_spec(spec: &str) -> Result<(ServiceName, FaultArgs), String> {
    use clap::ValueEnum;
    let (service, settings) =
        spec.split_once(':').ok_or_else(|| format!("fault {spec:?}: expected SERVICE:KEY=VALUE[,KEY=VALUE]"))?;
    let service =
        ServiceName::from_str(service, true).map_err(|_| format!("fault {spec:?}: unknown service {service:?}"))?;
    let mut args = FaultArgs::default();
    for kv in settings.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "latency" => {
                args.latency = Some(humantime::parse_duration(v).map_err(|e| format!("fault {spec:?}: latency: {e}"))?)
            }
            "error-rate" => {
                args.error_rate = Some(v.parse().map_err(|_| format!("fault {spec:?}: error-rate must be a number"))?)
            }
            "endpoint" => args.endpoint = Some(v.to_owned()),
            "provider-outage" => args.provider_outage = v.is_empty() || v == "true",
            "broker-down" => args.broker_down = v.is_empty() || v == "true",
            other => return Err(format!("fault {spec:?}: unknown key {other:?}")),
        }
    }
    args.settings().map_err(|e| format!("fault {spec:?}: {e}"))?;
    Ok((service, args))
}

impl Demo {
    /// Starts every service and, when asked, the load generator; returns once every service serves.
    /// On failure the children started so far are stopped. Call it from a thread that outlives the
    /// children (the main thread): they get SIGTERM when that thread ends.
    pub async fn start(opts: DemoOptions) -> Result<Demo> {
        let log_dir = opts.data_dir.join("logs");
        std::fs::create_dir_all(&log_dir)?;
        let mut demo = Demo { procs: Vec::new(), gateway_url: String::new(), registry_url: String::new(), log_dir };
        match demo.start_all(&opts).await {
            Ok(()) => Ok(demo),
            Err(e) => {
                demo.stop().await;
                Err(e)
            }
        }
    }

    async fn start_all(&mut self, opts: &DemoOptions) -> Result<()> {
        let port = |offset: u16| if opts.base_port == 0 { 0 } else { opts.base_port.saturating_add(offset) };
        self.registry_url = self.spawn(opts, ServiceName::Registry, "registry", port(1), None).await?;
        let mut plan: Vec<(ServiceName, String, u16)> = Vec::new();
        for n in 0..opts.catalog_instances.max(1) {
            plan.push((ServiceName::Catalog, format!("catalog-{}", n + 1), port(2 + n as u16)));
        }
        let after = 2 + opts.catalog_instances.max(1) as u16;
        for (i, s) in [
            ServiceName::Orders,
            ServiceName::Inventory,
            ServiceName::Payments,
            ServiceName::Provider,
            ServiceName::Shipping,
            ServiceName::Notifications,
        ]
        .into_iter()
        .enumerate()
        {
            plan.push((s, s.as_str().to_owned(), port(after + i as u16)));
        }
        for (service, instance, p) in plan {
            self.spawn(opts, service, &instance, p, None).await?;
        }
        self.gateway_url = self.spawn(opts, ServiceName::Gateway, "api-gateway", port(0), None).await?;
        if let Some(load) = &opts.load {
            let mut load = load.clone();
            load.target.get_or_insert_with(|| self.gateway_url.clone());
            self.spawn(opts, ServiceName::Loadgen, "loadgen", 0, Some(load)).await?;
        }
        Ok(())
    }

    /// Starts one child; for a server, waits for its `listening` line and returns its URL.
    async fn spawn(
        &mut self,
        opts: &DemoOptions,
        service: ServiceName,
        instance: &str,
        port: u16,
        load: Option<LoadArgs>,
    ) -> Result<String> {
        let log_path = self.log_dir.join(format!("{instance}.log"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut cmd = Command::new(&opts.exe);
        cmd.arg("demo-service")
            .arg(service.cli_name())
            .args(["--port", &port.to_string(), "--instance", instance])
            .arg("--data-dir")
            .arg(&opts.data_dir);
        if service != ServiceName::Registry {
            cmd.args(["--registry-url", &self.registry_url]);
        }
        if let Some(url) = &opts.amqp_url {
            cmd.args(["--amqp-url", url]);
        }
        for (s, f) in &opts.faults {
            if *s == service {
                cmd.args(f.to_args());
            }
        }
        if let Some(load) = &load {
            if let Some(t) = &load.target {
                cmd.args(["--target", t]);
            }
            cmd.args(["--rate", &load.rate.to_string(), "--users", &load.users.to_string()]);
            cmd.args(["--think", &humantime::format_duration(load.think).to_string()]);
            if let Some(d) = load.duration {
                cmd.args(["--load-duration", &humantime::format_duration(d).to_string()]);
            }
        }
        // The children's resource comes from their own service name, and their data goes to
        // the embedded collector whatever the parent's environment says.
        for var in [
            "OTEL_SERVICE_NAME",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OBSBOX_DEMO_PORT",
            "OBSBOX_DEMO_INSTANCE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &opts.otlp_endpoint);
        for (var, default) in [("OTEL_METRIC_EXPORT_INTERVAL", "5000"), ("OTEL_BSP_SCHEDULE_DELAY", "1000")] {
            if std::env::var_os(var).is_none() {
                cmd.env(var, default);
            }
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log.try_clone()?).kill_on_drop(true);
        // PR_SET_PDEATHSIG fires when the thread that forked exits, not only the process: call
        // `Demo::start` from a thread that outlives the children (`obsbox demo` polls it on the main
        // thread, through `Runtime::block_on`).
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl: then no signal would ever come.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            Error::Io(std::io::Error::new(e.kind(), format!("cannot start {}: {e}", opts.exe.display())))
        })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        self.procs.push(Proc { instance: instance.to_owned(), service, child });
        let mut lines = BufReader::new(stdout).lines();
        let mut log = tokio::fs::File::from_std(log);
        if service == ServiceName::Loadgen {
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = log.write_all(format!("{line}\n").as_bytes()).await;
                }
            });
            return Ok(String::new());
        }
        let first = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("listening ") {
                    return Ok::<_, std::io::Error>(Some(url.trim().to_owned()));
                }
            }
            Ok(None)
        })
        .await;
        let url = match first {
            Ok(Ok(Some(url))) => url,
            Ok(_) => {
                return Err(Error::Config(format!("{instance} exited before serving; see {}", log_path.display())));
            }
            Err(_) => {
                return Err(Error::Config(format!(
                    "{instance} did not start within {START_TIMEOUT:?}; see {}",
                    log_path.display()
                )));
            }
        };
        let announced = format!("listening {url}\n");
        tokio::spawn(async move {
            // The announcement stays in the log: tools find a service's address there.
            let _ = log.write_all(announced.as_bytes()).await;
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = log.write_all(format!("{line}\n").as_bytes()).await;
            }
        });
        tracing::info!(%instance, %url, "demo service started");
        Ok(url)
    }

    /// The children's process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter_map(|p| p.child.id()).collect()
    }

    /// Waits until a child exits, and says which; pending forever when none is left.
    pub async fn exited(&mut self) -> Exited {
        loop {
            for i in 0..self.procs.len() {
                if let Ok(Some(status)) = self.procs[i].child.try_wait() {
                    let p = self.procs.remove(i);
                    return Exited { instance: p.instance, service: p.service, status };
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every child: SIGTERM in reverse start order (the load generator first, the registry
    /// last), up to [`STOP_TIMEOUT`] each, then SIGKILL.
    pub async fn stop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            if let Some(pid) = p.child.id() {
                // SAFETY: kill(2) on a child we have not reaped yet, so the pid is still ours.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
            match tokio::time::timeout(STOP_TIMEOUT, p.child.wait()).await {
                Ok(Ok(status)) => tracing::info!(instance = %p.instance, %status, "demo service stopped"),
                _ => {
                    tracing::warn!(instance = %p.instance, "demo service did not stop, killing it");
                    let _ = p.child.kill().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse_or_say_why_not() {
        let (s, f) = parse_fault_spec("payments:error-rate=0.3,latency=200ms,endpoint=POST /charges").unwrap();
        assert_eq!(s, ServiceName::Payments);
        assert_eq!(f.error_rate, Some(0.3));
        assert_eq!(f.latency, Some(Duration::from_millis(200)));
        assert_eq!(f.endpoint.as_deref(), Some("POST /charges"));
        let (s, f) = parse_fault_spec("provider:provider-outage").unwrap();
        assert_eq!(s, ServiceName::Provider);
        assert!(f.provider_outage);
        assert!(parse_fault_spec("payments").unwrap_err().contains("SERVICE:KEY=VALUE"));
        assert!(parse_fault_spec("nope:latency=1s").unwrap_err().contains("unknown service"));
        assert!(parse_fault_spec("orders:speed=1").unwrap_err().contains("unknown key"));
        assert!(parse_fault_spec("orders:error-rate=7").unwrap_err().contains("error_rate"));
    }
}
