//! Service settings: flags of `obsbox demo-service <name>`, each with an `OBSBOX_DEMO_*` variable.

use std::path::PathBuf;
use std::time::Duration;

use crate::faults::FaultArgs;

/// The demo's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ServiceName {
    /// Service discovery: register, heartbeat, resolve.
    Registry,
    /// The single entry point: routing, JWT auth, rate limits, request ids.
    #[value(name = "api-gateway", alias = "gateway")]
    Gateway,
    /// Products and carts.
    Catalog,
    /// Orders: the checkout saga, the outbox, the order-history read model.
    Orders,
    /// Stock, served over gRPC.
    Inventory,
    /// Payments, calling the external provider through the resilience patterns.
    Payments,
    /// The simulated, flaky external payment provider.
    Provider,
    /// Shipping, consuming order events.
    Shipping,
    /// Notifications, consuming order events.
    Notifications,
    /// The load generator.
    Loadgen,
}

impl ServiceName {
    /// Every service `obsbox demo` starts, in start order (the registry first, the load generator last).
    pub const ALL: [ServiceName; 10] = [
        ServiceName::Registry,
        ServiceName::Provider,
        ServiceName::Inventory,
        ServiceName::Payments,
        ServiceName::Shipping,
        ServiceName::Notifications,
        ServiceName::Orders,
        ServiceName::Catalog,
        ServiceName::Gateway,
        ServiceName::Loadgen,
    ];

    /// The name used for `service.name`, in the registry and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Registry => "registry",
            ServiceName::Gateway => "api-gateway",
            ServiceName::Catalog => "catalog",
            ServiceName::Orders => "orders",
            ServiceName::Inventory => "inventory",
            ServiceName::Payments => "payments",
            ServiceName::Provider => "payment-provider",
            ServiceName::Shipping => "shipping",
            ServiceName::Notifications => "notifications",
            ServiceName::Loadgen => "loadgen",
        }
    }

    /// The name on the command line (`obsbox demo-service <name>`).
    pub fn cli_name(self) -> &'static str {
        match self {
            ServiceName::Provider => "provider",
            other => other.as_str(),
        }
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of one service process.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceConfig {
    /// Address to listen on.
    #[arg(long, env = "OBSBOX_DEMO_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: a free one; the bound address is printed and registered).
    #[arg(long, env = "OBSBOX_DEMO_PORT", default_value_t = 0)]
    pub port: u16,
    /// Directory of the service's SQLite database.
    #[arg(long, env = "OBSBOX_DEMO_DATA_DIR", default_value = "data/demo")]
    pub data_dir: PathBuf,
    /// This instance's id (`service.instance.id`); default: `<service>-<pid>`.
    #[arg(long, env = "OBSBOX_DEMO_INSTANCE")]
    pub instance: Option<String>,
    /// URL other services reach this one at (default: `http://<bound address>`).
    #[arg(long, env = "OBSBOX_DEMO_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Base URL of the service registry; none: the service does not register (tests).
    #[arg(long, env = "OBSBOX_DEMO_REGISTRY_URL")]
    pub registry_url: Option<String>,
    /// RabbitMQ URL (`amqp://...`); none: events are delivered over HTTP.
    #[arg(long, env = "OBSBOX_DEMO_AMQP_URL")]
    pub amqp_url: Option<String>,
    /// `deployment.environment.name` unless `OTEL_RESOURCE_ATTRIBUTES` names one.
    #[arg(long, env = "OBSBOX_DEMO_ENVIRONMENT", default_value = "demo")]
    pub environment: String,
    /// Secret the gateway signs and checks JWTs with.
    #[arg(long, env = "OBSBOX_DEMO_JWT_SECRET", default_value = "obsbox-demo-secret")]
    pub jwt_secret: String,
    /// Requests per second each client may make through the gateway (burst: twice that).
    #[arg(long, env = "OBSBOX_DEMO_RATE_LIMIT", default_value_t = 50)]
    pub rate_limit: u32,
    /// Faults injected from the start.
    #[command(flatten)]
    pub faults: FaultArgs,
    /// Load generator settings.
    #[command(flatten)]
    pub load: LoadArgs,
}

impl ServiceConfig {
    /// Settings for tests: loopback, a free port, the given data directory, no registry.
    pub fn for_test(data_dir: PathBuf) -> ServiceConfig {
        ServiceConfig {
            host: "127.0.0.1".into(),
            port: 0,
            data_dir,
            instance: None,
            advertise_url: None,
            registry_url: None,
            amqp_url: None,
            environment: "test".into(),
            jwt_secret: "test-secret".into(),
            rate_limit: 50,
            faults: FaultArgs::default(),
            load: LoadArgs::default(),
        }
    }

    /// This instance's id: the configured one or `<service>-<pid>`.
    pub fn instance_id(&self, service: ServiceName) -> String {
        self.instance.clone().unwrap_or_else(|| format!("{}-{}", service.as_str(), std::process::id()))
    }
}

/// Settings of the load generator.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Gateway URL the load generator drives; default: resolved through the registry.
    #[arg(long, env = "OBSBOX_DEMO_TARGET")]
    pub target: Option<String>,
    /// User journeys started per second.
    #[arg(long, env = "OBSBOX_DEMO_RATE", default_value_t = 2.0)]
    pub rate: f64,
    /// Distinct simulated users.
    #[arg(long, env = "OBSBOX_DEMO_USERS", default_value_t = 20)]
    pub users: u32,
    /// Mean think time between a user's steps.
    #[arg(long, env = "OBSBOX_DEMO_THINK", default_value = "300ms", value_parser = humantime::parse_duration)]
    pub think: Duration,
    /// Stop after this long (default: run until stopped).
    #[arg(long = "load-duration", id = "load_duration", env = "OBSBOX_DEMO_LOAD_DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

impl Default for LoadArgs {
    fn default() -> LoadArgs {
        LoadArgs { target: None, rate: 2.0, users: 20, think: Duration::from_millis(300), duration: None }
    }
}
