//! A real Prometheus (Debian's `/usr/bin/prometheus`) for tests: started on a free loopback port
//! with a temporary data dir and config, killed on drop.
//!
//! [`Prometheus::start`] fails the test with a clear message when the binary is missing, unless
//! `OBSBOX_SKIP_EXTERNAL=1` is set (then it returns `None` and the test skips itself).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar, Gauge, Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics, Sum,
    exemplar, metric,
};

use super::{gauge_point, resource, scope, str_kv};

/// Trace id (hex) of the exemplars of [`shop_metrics`].
pub const SHOP_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// Where Debian installs Prometheus.
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";

/// A scrape job for the generated configuration.
#[derive(Clone, Debug)]
pub struct ScrapeJob {
    /// `job_name`.
    pub job: String,
    /// `host:port`.
    pub target: SocketAddr,
    /// `metrics_path`.
    pub path: String,
    /// Scrape (and evaluation) interval.
    pub interval: Duration,
}

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    /// Where its HTTP API listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    client: reqwest::blocking::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus with the remote-write receiver and exemplar storage enabled (plus
    /// `extra_flags`), scraping `jobs` (with `honor_labels`, as for a federation endpoint), and
    /// waits until it is ready. `None` only when the binary is missing and
    /// `OBSBOX_SKIP_EXTERNAL=1`.
    pub fn start(jobs: &[ScrapeJob], extra_flags: &[&str]) -> Option<Prometheus> {
        let mut scrape_configs = String::new();
        for j in jobs {
            let secs = j.interval.as_millis();
            scrape_configs.push_str(&format!(
                "  - job_name: '{}'\n    scrape_interval: {secs}ms\n    scrape_timeout: {secs}ms\n    \
                 honor_labels: true\n    metrics_path: '{}'\n    static_configs:\n      - targets: ['{}']\n",
                j.job, j.path, j.target
            ));
        }
        Self::start_with_scrape_configs(&scrape_configs, extra_flags)
    }

    /// [`Prometheus::start`] with the `scrape_configs:` entries given as YAML (each starting
    /// with `  - job_name:`), for settings [`ScrapeJob`] does not have.
    pub fn start_with_scrape_configs(scrape_configs: &str, extra_flags: &[&str]) -> Option<Prometheus> {
        if !std::path::Path::new(PROMETHEUS_BIN).exists() {
            if std::env::var("OBSBOX_SKIP_EXTERNAL").as_deref() == Ok("1") {
                eprintln!("skipping: {PROMETHEUS_BIN} not found and OBSBOX_SKIP_EXTERNAL=1");
                return None;
            }
            panic!("{PROMETHEUS_BIN} not found: install Debian's prometheus package (apt-get install prometheus)");
        }
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(scrape_configs, extra_flags) {
                Ok(p) => return Some(p),
                Err(e) => last_error = e,
            }
        }
        panic!("prometheus did not start: {last_error}");
    }

    fn try_start(scrape_configs: &str, extra_flags: &[&str]) -> Result<Prometheus, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let config =
            format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape_configs}");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().expect("addr");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(PROMETHEUS_BIN)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--web.enable-remote-write-receiver")
            .arg("--enable-feature=exemplar-storage")
            .arg("--log.level=warn")
            .args(extra_flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot run {PROMETHEUS_BIN}: {e}"))?;
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
        let mut p = Prometheus { child, addr, dir, client };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("exited with {status}: {}", p.log()));
            }
            if p.client.get(format!("http://{addr}/-/ready")).send().is_ok_and(|r| r.status().is_success()) {
                return Ok(p);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("not ready after 30 s: {}", p.log()))
    }

    /// The remote-write receiver's URL.
    pub fn remote_write_url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    /// What Prometheus logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `GET /api/v1/{path}` with query parameters; the `data` member of a successful answer.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> serde_json::Value {
        let url =
            reqwest::Url::parse_with_params(&format!("http://{}/api/v1/{path}", self.addr), params).expect("valid url");
        let resp = self.client.get(url).send().unwrap_or_else(|e| panic!("prometheus /api/v1/{path}: {e}"));
        let text = resp.text().expect("prometheus answers");
        let body: serde_json::Value = serde_json::from_str(&text).expect("prometheus answers JSON");
        assert_eq!(body["status"], "success", "prometheus /api/v1/{path} {params:?}: {body}");
        body["data"].clone()
    }

    /// Instant query at the current time; the `result` array.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        self.api("query", &[("query", promql)])["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls [`Prometheus::query`] until `accept` holds for its result, or panics after `timeout`
    /// with the last result and the log.
    pub fn wait_for(
        &self,
        promql: &str,
        timeout: Duration,
        accept: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.query(promql);
            if accept(&result) {
                return result;
            }
            if Instant::now() > deadline {
                panic!("prometheus query {promql} gave {result:?} after {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A counter, a gauge and a histogram of service `shop` (resource attribute
/// `deployment.environment=test`) at `t` (Unix ns); the counter and the histogram carry an
/// exemplar of trace [`SHOP_TRACE_ID`].
pub fn shop_metrics(t: u64, requests: f64) -> ExportMetricsServiceRequest {
    let start = t - 60_000_000_000;
    let exemplar = |value: f64| Exemplar {
        time_unix_nano: t,
        trace_id: hex::decode(SHOP_TRACE_ID).expect("hex"),
        span_id: hex::decode("b7ad6b7169203331").expect("hex"),
        value: Some(exemplar::Value::AsDouble(value)),
        ..Default::default()
    };
    let mut counter_point = gauge_point(requests, t, vec![str_kv("route", "/cart")]);
    counter_point.start_time_unix_nano = start;
    counter_point.exemplars = vec![exemplar(1.0)];
    let histogram = HistogramDataPoint {
        attributes: vec![str_kv("route", "/cart")],
        start_time_unix_nano: start,
        time_unix_nano: t,
        count: 6,
        sum: Some(2.5),
        bucket_counts: vec![1, 2, 3],
        explicit_bounds: vec![0.1, 0.5],
        exemplars: vec![exemplar(0.3)],
        ..Default::default()
    };
    let metrics = vec![
        Metric {
            name: "shop.requests".into(),
            unit: "{request}".into(),
            description: "Requests served.".into(),
            data: Some(metric::Data::Sum(Sum {
                data_points: vec![counter_point],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        },
        Metric {
            name: "shop.queue.depth".into(),
            data: Some(metric::Data::Gauge(Gauge { data_points: vec![gauge_point(7.0, t, vec![])] })),
            ..Default::default()
        },
        Metric {
            name: "shop.latency".into(),
            unit: "s".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: vec![histogram],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        },
    ];
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some({
                let mut r = resource("shop");
                r.attributes.push(str_kv("deployment.environment", "test"));
                r
            }),
            scope_metrics: vec![ScopeMetrics { scope: Some(scope()), metrics, schema_url: String::new() }],
            schema_url: String::new(),
        }],
    }
}
