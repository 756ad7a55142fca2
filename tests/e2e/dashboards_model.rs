//! The Grafana dashboards and provisioning files, checked against Grafana's dashboard JSON model
//! and against each other without a Grafana (none runs here): schema version, panel types of
//! Grafana core, datasource uids that the provisioning defines, defined template variables,
//! unique panel ids and refIds, panels inside the 24-column grid, PromQL that parses, the
//! trace <-> logs links, and the provisioning paths that docker-compose.yml mounts.
//! tests/e2e/compose_stack.rs runs every query against a real Prometheus and obsbox.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::compose::{Compose, yaml_file};
use common::dashboards::{
    BUILTINS, datasources, expand, load_dashboards, panels, parse_label_values, queries, used_variables, variable_names,
};
use serde_json::Value;

/// Dashboard schema versions of the Grafana releases the compose file may run (11.0 to 12.x).
const SCHEMA_VERSIONS: std::ops::RangeInclusive<u64> = 39..=41;

/// Panel types that ship with Grafana (no plugin to install).
const CORE_PANELS: &[&str] = &[
    "row",
    "timeseries",
    "stat",
    "gauge",
    "bargauge",
    "table",
    "text",
    "logs",
    "traces",
    "nodeGraph",
    "state-timeline",
    "status-history",
    "barchart",
    "histogram",
    "heatmap",
    "piechart",
    "alertlist",
    "dashlist",
    "news",
    "xychart",
    "trend",
    "candlestick",
    "flamegraph",
    "geomap",
    "canvas",
    "annolist",
];

/// Datasource types of Grafana core.
const CORE_DATASOURCES: &[&str] = &["prometheus", "loki", "jaeger", "alertmanager", "tempo", "grafana"];

fn root() -> std::path::PathBuf {
    common::workspace_root()
}

#[test]
fn datasources_are_core_types_with_unique_uids_and_linked_traces_and_logs() {
    let ds = datasources(&root());
    let type_of = |uid: &str| ds.get(uid).and_then(|d| d["type"].as_str()).unwrap_or("").to_string();
    for (uid, d) in &ds {
        let t = d["type"].as_str().unwrap_or("");
        assert!(CORE_DATASOURCES.contains(&t), "datasource {uid}: type {t:?} is not a core datasource");
        let url = d["url"].as_str().unwrap_or("");
        assert!(url.starts_with("http://"), "datasource {uid}: url {url:?}");
        assert_eq!(
            d["access"], "proxy",
            "datasource {uid}: Grafana's server must do the requests (compose host names)"
        );
    }
    // The four views of the issue: Prometheus, and obsbox as Jaeger, Loki and Prometheus.
    let by_url: BTreeMap<&str, &str> =
        ds.values().map(|d| (d["url"].as_str().unwrap_or(""), d["type"].as_str().unwrap_or(""))).collect();
    assert_eq!(by_url.get("http://prometheus:9090"), Some(&"prometheus"));
    assert_eq!(by_url.get("http://obsbox:16686/prometheus"), Some(&"prometheus"));
    assert!(
        ds.values().any(|d| d["type"] == "jaeger" && d["url"] == "http://obsbox:16686"),
        "a Jaeger datasource at obsbox:16686"
    );
    // Grafana's Loki datasource appends /loki/api/v1/... itself.
    assert!(ds.values().any(|d| d["type"] == "loki" && d["url"] == "http://obsbox:16686"), "a Loki datasource");
    assert_eq!(ds.values().filter(|d| d["isDefault"] == Value::Bool(true)).count(), 1, "exactly one default");

    // Trace to logs: every Jaeger datasource links to a Loki one, with a query that filters by
    // the trace id label obsbox gives every log record.
    for d in ds.values().filter(|d| d["type"] == "jaeger") {
        let t2l = &d["jsonData"]["tracesToLogsV2"];
        let target = t2l["datasourceUid"].as_str().expect("tracesToLogsV2.datasourceUid");
        assert_eq!(type_of(target), "loki", "tracesToLogsV2 must point at a Loki datasource");
        if t2l["customQuery"] == Value::Bool(true) {
            let q = t2l["query"].as_str().expect("custom query");
            // $$ is how a provisioning file writes a literal $.
            assert!(q.contains("trace_id=\"$${__trace.traceId}\""), "trace-to-logs query {q}");
            let logql = q.replace("$${__trace.traceId}", "0af7651916cd43dd8448eb211c80319c");
            assert!(!logql.contains('$'), "unexpanded variable in {logql}");
        } else {
            assert_eq!(t2l["filterByTraceID"], Value::Bool(true), "trace-to-logs must filter by trace id");
        }
    }
    // Logs to trace: Loki's derived field on the trace_id label opens the Jaeger datasource.
    for d in ds.values().filter(|d| d["type"] == "loki") {
        let fields = d["jsonData"]["derivedFields"].as_array().expect("derivedFields");
        let f = fields.iter().find(|f| f["matcherRegex"] == "trace_id").expect("a derived field on trace_id");
        assert_eq!(f["matcherType"], "label");
        assert_eq!(type_of(f["datasourceUid"].as_str().unwrap_or("")), "jaeger");
        assert_eq!(f["url"], "$${__value.raw}", "the internal link takes the label value as the trace id");
    }
    // Exemplars on Prometheus datasources open the trace.
    for d in ds.values().filter(|d| d["type"] == "prometheus") {
        let dest = d["jsonData"]["exemplarTraceIdDestinations"].as_array().expect("exemplarTraceIdDestinations");
        assert!(
            dest.iter()
                .any(|e| e["name"] == "trace_id" && type_of(e["datasourceUid"].as_str().unwrap_or("")) == "jaeger")
        );
    }
}

#[test]
fn dashboards_follow_grafanas_model() {
    let root = root();
    let ds = datasources(&root);
    let mut uids = BTreeSet::new();
    for (file, d) in load_dashboards(&root) {
        let uid = d["uid"].as_str().unwrap_or_else(|| panic!("{file}: no uid"));
        assert!(uid.len() <= 40 && !uid.is_empty(), "{file}: uid {uid:?} (Grafana allows 40 characters)");
        assert!(uids.insert(uid.to_string()), "{file}: uid {uid} used twice");
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "{file}: title");
        let version = d["schemaVersion"].as_u64().unwrap_or(0);
        assert!(SCHEMA_VERSIONS.contains(&version), "{file}: schemaVersion {version} not in {SCHEMA_VERSIONS:?}");
        assert_eq!(d["id"], Value::Null, "{file}: provisioned dashboards carry no database id");
        assert!(d["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "obsbox")), "{file}: tag obsbox");

        let variables = variable_names(&d);
        let mut ids = BTreeSet::new();
        let mut cells: Vec<(String, [u64; 4])> = Vec::new();
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or("");
            let ctx = format!("{file}: panel {title:?}");
            let t = p["type"].as_str().unwrap_or("");
            assert!(CORE_PANELS.contains(&t), "{ctx}: type {t:?} is not a core panel");
            let id = p["id"].as_u64().unwrap_or_else(|| panic!("{ctx}: no id"));
            assert!(ids.insert(id), "{ctx}: id {id} used twice");
            let g = &p["gridPos"];
            let [x, y, w, h] =
                ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap_or_else(|| panic!("{ctx}: gridPos.{k}")));
            assert!(w >= 1 && h >= 1 && x + w <= 24, "{ctx}: gridPos {g} outside the 24 columns");
            for (other, [ox, oy, ow, oh]) in &cells {
                let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
                assert!(!overlap, "{ctx} overlaps panel {other:?}");
            }
            cells.push((title.to_string(), [x, y, w, h]));
            if let Some(uid) = p["datasource"]["uid"].as_str() {
                assert!(ds.contains_key(uid), "{ctx}: datasource uid {uid} is not provisioned");
                assert_eq!(p["datasource"]["type"], ds[uid]["type"], "{ctx}: datasource type");
            }
            let mut refs = BTreeSet::new();
            for target in p["targets"].as_array().cloned().unwrap_or_default() {
                let r = target["refId"].as_str().unwrap_or_else(|| panic!("{ctx}: target without refId"));
                assert!(refs.insert(r.to_string()), "{ctx}: refId {r} twice");
                let uid = target["datasource"]["uid"].as_str().or(p["datasource"]["uid"].as_str());
                let uid = uid.unwrap_or_else(|| panic!("{ctx}: target {r} has no datasource"));
                assert!(ds.contains_key(uid), "{ctx}: target {r}: datasource uid {uid} is not provisioned");
                if ds[uid]["type"] == "jaeger" {
                    // The Jaeger datasource's query types (Grafana's JaegerQueryType).
                    let qt = target["queryType"].as_str().unwrap_or("");
                    assert!(
                        ["search", "dependencyGraph", "upload", ""].contains(&qt),
                        "{ctx}: Jaeger query type {qt:?}"
                    );
                } else {
                    let expr = target["expr"].as_str().unwrap_or("");
                    assert!(!expr.trim().is_empty(), "{ctx}: target {r} without expr");
                }
            }
            if t == "alertlist" {
                let name = p["options"]["datasource"].as_str().unwrap_or("");
                assert!(ds.values().any(|d| d["name"] == name), "{ctx}: alert rules of unknown datasource {name:?}");
            }
            // Every ${...} anywhere in the panel (queries, links, titles) is a defined variable,
            // a built-in or a data link field reference.
            for v in used_variables(&p.to_string()) {
                let known = variables.contains(&v) || BUILTINS.iter().any(|(b, _)| *b == v) || v.starts_with("__");
                assert!(known, "{ctx}: variable ${v} is not defined");
            }
        }
        for v in d["templating"]["list"].as_array().cloned().unwrap_or_default() {
            let name = v["name"].as_str().unwrap_or("");
            if v["type"] == "query" {
                let uid = v["datasource"]["uid"].as_str().unwrap_or("");
                assert!(ds.contains_key(uid), "{file}: variable {name}: datasource {uid} is not provisioned");
                let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or("");
                assert!(parse_label_values(q).is_some(), "{file}: variable {name}: {q:?} is not label_values(...)");
            }
        }
    }
    assert_eq!(uids.len(), 4, "four dashboards: services (RED), SLOs, obsbox itself, the demo shop");
}

#[test]
fn every_promql_expression_parses() {
    let root = root();
    let ds = datasources(&root);
    let mut checked = 0;
    for (file, d) in load_dashboards(&root) {
        let values: BTreeMap<String, Vec<String>> =
            variable_names(&d).into_iter().map(|v| (v, vec!["a".to_string(), "b-c".to_string()])).collect();
        for q in queries(&file, &d) {
            if ds[&q.datasource]["type"] != "prometheus" {
                continue;
            }
            let expr = expand(&q.expr, &values);
            if let Err(e) = promql_parser::parser::parse(&expr) {
                panic!("{}: {expr}: {e}", q.context);
            }
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} PromQL expressions");
}

#[test]
fn provisioning_points_at_the_mounted_dashboards() {
    let root = root();
    let compose = Compose::load(&root);
    let grafana = compose.service("grafana");
    let mounts = grafana.mounts();
    let target_of = |source: &str| {
        mounts
            .iter()
            .find(|m| m.source == source)
            .map(|m| m.target.clone())
            .unwrap_or_else(|| panic!("grafana mounts {source}"))
    };
    assert_eq!(target_of("./dashboards/grafana/provisioning"), "/etc/grafana/provisioning");
    let dashboards_target = target_of("./dashboards/grafana/dashboards");
    let providers = yaml_file(&root.join("dashboards/grafana/provisioning/dashboards/obsbox.yml"));
    let provider = &providers["providers"][0];
    assert_eq!(provider["type"], "file");
    assert_eq!(provider["options"]["path"].as_str(), Some(dashboards_target.as_str()));
    let home = grafana.environment()["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].clone();
    let home_file = home.strip_prefix(&format!("{dashboards_target}/")).expect("home dashboard among the mounted ones");
    assert!(root.join("dashboards/grafana/dashboards").join(home_file).is_file(), "{home}");
    let env = grafana.environment();
    assert_eq!(env["GF_AUTH_ANONYMOUS_ENABLED"], "true");
    assert_eq!(env["GF_AUTH_ANONYMOUS_ORG_ROLE"], "Viewer");
}
