//! The Grafana dashboards and provisioning under `dashboards/grafana/`, read as the tests need
//! them: every query of every panel with its datasource, and the template variables, expanded as
//! Grafana expands them before sending a query.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::compose::yaml_file;

/// Where the dashboards' JSON files are.
pub fn dashboards_dir(root: &Path) -> PathBuf {
    root.join("dashboards/grafana/dashboards")
}

/// Every dashboard file with its parsed JSON, by file name.
pub fn load_dashboards(root: &Path) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dashboards_dir(root)).expect("read dashboards dir").flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read dashboard");
            let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.insert(path.file_name().expect("file name").to_string_lossy().into_owned(), json);
        }
    }
    assert!(!out.is_empty(), "no dashboards in {}", dashboards_dir(root).display());
    out
}

/// The provisioned datasources (`datasources:` of every file in provisioning/datasources), by uid.
pub fn datasources(root: &Path) -> BTreeMap<String, Value> {
    let dir = root.join("dashboards/grafana/provisioning/datasources");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("read datasources dir").flatten() {
        let doc = yaml_file(&entry.path());
        for ds in doc["datasources"].as_array().cloned().unwrap_or_default() {
            let uid = ds["uid"].as_str().unwrap_or_else(|| panic!("datasource without uid: {ds}")).to_string();
            assert!(out.insert(uid.clone(), ds).is_none(), "datasource uid {uid} defined twice");
        }
    }
    out
}

/// Every panel of a dashboard, rows' nested panels included.
pub fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().cloned().unwrap_or_default() {
        let nested = p["panels"].as_array().cloned().unwrap_or_default();
        out.push(p);
        out.extend(nested);
    }
    out
}

/// One query of a panel.
#[derive(Clone, Debug)]
pub struct Query {
    /// Dashboard file and panel title, for messages.
    pub context: String,
    /// The datasource uid (the target's, else the panel's).
    pub datasource: String,
    /// The expression as written (PromQL or LogQL); empty for a Jaeger query.
    pub expr: String,
    /// A Jaeger datasource query's type (`search`, `dependencyGraph`, ...).
    pub query_type: Option<String>,
    /// An instant query (else a range query).
    pub instant: bool,
}

/// Every query of every panel of `dashboard` (named `file`).
pub fn queries(file: &str, dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().cloned().unwrap_or_default() {
            let ds = t["datasource"]["uid"].as_str().or(p["datasource"]["uid"].as_str()).unwrap_or("").to_string();
            let expr = t["expr"].as_str().unwrap_or("").to_string();
            out.push(Query {
                context: format!("{file}: panel {:?} target {}", p["title"], t["refId"]),
                datasource: ds,
                expr,
                query_type: t["queryType"].as_str().map(str::to_string),
                instant: t["instant"] == Value::Bool(true),
            });
        }
    }
    out
}

/// The names of a dashboard's template variables.
pub fn variable_names(dashboard: &Value) -> Vec<String> {
    dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect()
}

/// Grafana's built-in variables as the tests expand them (a 15 s scrape interval, a 1 h range).
pub const BUILTINS: [(&str, &str); 4] =
    [("__rate_interval", "1m"), ("__interval", "15s"), ("__range", "1h"), ("__range_s", "3600")];

/// Names of the variables `expr` uses (`$name`, `${name}`, `${name:format}`, `[[name]]`).
pub fn used_variables(expr: &str) -> Vec<String> {
    let re = regex::Regex::new(r"\$\{([A-Za-z0-9_]+)(?::[a-z]+)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)\]\]")
        .expect("valid regex");
    re.captures_iter(expr).filter_map(|c| c.get(1).or(c.get(2)).or(c.get(3)).map(|m| m.as_str().to_string())).collect()
}

/// `expr` with every variable replaced: built-ins by [`BUILTINS`], others by `values` joined as
/// Grafana formats a multi-value variable for Prometheus and Loki (`(a|b)`, regex-escaped).
pub fn expand(expr: &str, values: &BTreeMap<String, Vec<String>>) -> String {
    let re = regex::Regex::new(r"\$\{([A-Za-z0-9_]+)(?::[a-z]+)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)\]\]")
        .expect("valid regex");
    re.replace_all(expr, |c: &regex::Captures<'_>| {
        let name = c.get(1).or(c.get(2)).or(c.get(3)).expect("a name").as_str();
        if let Some((_, v)) = BUILTINS.iter().find(|(n, _)| *n == name) {
            return v.to_string();
        }
        let vals = values.get(name).unwrap_or_else(|| panic!("variable {name} has no values"));
        match vals.as_slice() {
            [one] => regex_escape(one),
            many => format!("({})", many.iter().map(|v| regex_escape(v)).collect::<Vec<_>>().join("|")),
        }
    })
    .into_owned()
}

/// Escapes as Grafana's Prometheus datasource does for regex matchers.
fn regex_escape(v: &str) -> String {
    let mut out = String::new();
    for c in v.chars() {
        if "\\^$*+?.()|{}[]".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

/// `label_values(metric, label)` -> (metric, label); `label_values(label)` -> ("", label).
pub fn parse_label_values(query: &str) -> Option<(String, String)> {
    let inner = query.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    match inner.rsplit_once(',') {
        Some((metric, label)) => Some((metric.trim().to_string(), label.trim().to_string())),
        None => Some((String::new(), inner.trim().to_string())),
    }
}
