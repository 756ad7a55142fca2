//! The `[slo]` configuration section.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SloError;

/// Settings of SLO evaluation (the `[slo]` section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SloConfig {
    /// Directory of OpenSLO YAML files (`*.yaml`, `*.yml`), reloaded on change and on SIGHUP.
    /// Unset: no SLOs are evaluated.
    pub dir: Option<PathBuf>,
    /// Time between two evaluations. Default 30 s; 1 s to 5 min.
    #[serde(with = "humantime_serde")]
    pub evaluation_interval: Duration,
    /// Demo time compression: every duration (SLO window, alert windows, count buckets,
    /// evaluation interval) is divided by this. 1 (default) is real time; must divide 60, so
    /// that a count bucket (1 min of SLO time) is a whole number of seconds.
    pub time_scale: u32,
    /// Where notifications go.
    pub notify: NotifyConfig,
}

impl Default for SloConfig {
    fn default() -> Self {
        SloConfig { dir: None, evaluation_interval: Duration::from_secs(30), time_scale: 1, notify: Default::default() }
    }
}

/// Notification receivers (the `[slo.notify]` section).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// URLs that receive a POST in the Alertmanager webhook format when an alert fires or
    /// resolves.
    pub webhooks: Vec<String>,
    /// Alertmanager base URLs (e.g. `http://alertmanager:9093`): firing alerts are posted to
    /// `/api/v2/alerts` at every evaluation, as Prometheus does, and resolved ones once.
    pub alertmanagers: Vec<String>,
    /// Base URL of obsbox's UI as users reach it, for links in notifications
    /// (`generatorURL`). Default `http://localhost:16686`.
    pub external_url: Option<String>,
}

impl SloConfig {
    /// Checks every value; the error names the key (without the `slo.` prefix).
    pub fn validate(&self) -> Result<(), SloError> {
        let bad = |key: &'static str, reason: &str| Err(SloError::InvalidConfig { key, reason: reason.into() });
        if self.evaluation_interval < Duration::from_secs(1) || self.evaluation_interval > Duration::from_secs(300) {
            return bad("evaluation_interval", "must be between 1s and 5m");
        }
        if self.time_scale == 0 || 60 % self.time_scale != 0 {
            return bad("time_scale", "must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60)");
        }
        for (key, urls) in
            [("notify.webhooks", &self.notify.webhooks), ("notify.alertmanagers", &self.notify.alertmanagers)]
        {
            for u in urls {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return bad(key, &format!("{u:?} is not an http(s) URL"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        SloConfig::default().validate().unwrap();
        let c = SloConfig { time_scale: 7, ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("time_scale"));
        let mut c = SloConfig::default();
        c.notify.webhooks.push("localhost:9000".into());
        assert!(c.validate().unwrap_err().to_string().contains("notify.webhooks"));
    }
}
