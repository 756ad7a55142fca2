//! The metadata endpoints: label names and values, series, index stats, volume, detected labels
//! and fields. Exact where the index answers; from a sample of recent lines where it cannot
//! (`docs/logql.md` says which).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use obsbox_storage::{LogEntry, LogPredicate, LogQuery, TimeRange};

use super::eval::{self, Stats, count, selector_matches};
use super::labels::{
    DERIVED_LEVELS, LEVEL_LABEL, Labels, SERVICE_LABEL, flatten_json, json_doc, line, parse_logfmt, resource_label,
    sanitize, stream_labels,
};
use super::logql::{LogExpr, Matcher, parse_bytes, parse_duration};
use super::plan::{Catalog, StreamKind, and, level_eq, pushdown};
use crate::{QueryError, QueryService};

/// Lines sampled by the endpoints that look at lines.
pub(crate) const SAMPLE_LINES: usize = 5000;
/// Services sampled for `/series`, and lines per service.
const SERIES_SERVICES: usize = 200;
const SERIES_LINES_PER_SERVICE: usize = 1000;
/// Resource attribute keys examined for `/labels`.
const MAX_LABEL_KEYS: usize = 500;

fn selector_expr(matchers: &[Matcher]) -> LogExpr {
    LogExpr { matchers: matchers.to_vec(), stages: Vec::new() }
}

/// The newest `n` records matching the selector (exactly, after post-filtering).
async fn sample(
    qs: &QueryService,
    range: TimeRange,
    matchers: &[Matcher],
    n: usize,
) -> Result<Vec<(Labels, LogEntry)>, QueryError> {
    let pred = if matchers.is_empty() {
        LogPredicate::All
    } else {
        let mut cat = Catalog::new(qs.clone(), range);
        pushdown(&selector_expr(matchers), &mut cat).await?.pred
    };
    let entries = qs.find_logs(LogQuery { predicate: pred, time: range, limit: n }).await?;
    Ok(entries
        .into_iter()
        .filter_map(|e| {
            let l = stream_labels(&e);
            selector_matches(matchers, &l).then_some((l, e))
        })
        .collect())
}

/// Whether any record without severity text has a severity number giving the level `name`.
async fn derived_level_present(qs: &QueryService, range: TimeRange, name: &str) -> Result<bool, QueryError> {
    let derived_only = and(vec![LogPredicate::SeverityText(String::new()), level_eq(name)]);
    Ok(count(qs, &derived_only, range).await? > 0)
}

/// `GET /labels`: stream label names.
pub(crate) async fn label_names(
    qs: &QueryService,
    range: TimeRange,
    selector: Option<&[Matcher]>,
) -> Result<Vec<String>, QueryError> {
    let mut names = BTreeSet::new();
    if let Some(ms) = selector {
        for (l, _) in sample(qs, range, ms, SAMPLE_LINES).await? {
            names.extend(l.into_keys());
        }
        return Ok(names.into_iter().collect());
    }
    let mut cat = Catalog::new(qs.clone(), range);
    if cat.services().await?.iter().any(|s| !s.is_empty()) {
        names.insert(SERVICE_LABEL.to_string());
    }
    let severities = cat.severities().await?.to_vec();
    if severities.iter().any(|s| !s.is_empty())
        || (severities.iter().any(|s| s.is_empty()) && {
            let p = and(vec![LogPredicate::SeverityText(String::new()), LogPredicate::MinSeverity(1)]);
            count(qs, &p, range).await? > 0
        })
    {
        names.insert(LEVEL_LABEL.to_string());
    }
    let keys: Vec<String> = cat.resource_keys().await?.iter().take(MAX_LABEL_KEYS).cloned().collect();
    for k in keys {
        let Some(label) = resource_label(&k) else { continue };
        if names.contains(&label) {
            continue;
        }
        // Only string attributes are labels; a key with too many values to list has some.
        if cat.resource_values(&k).await?.is_none_or(|v| !v.is_empty()) {
            names.insert(label);
        }
    }
    Ok(names.into_iter().collect())
}

/// `GET /label/{name}/values`: values of a stream label.
pub(crate) async fn label_values(
    qs: &QueryService,
    range: TimeRange,
    name: &str,
    selector: Option<&[Matcher]>,
) -> Result<Vec<String>, QueryError> {
    let mut values = BTreeSet::new();
    if let Some(ms) = selector {
        for (mut l, _) in sample(qs, range, ms, SAMPLE_LINES).await? {
            if let Some(v) = l.remove(name) {
                values.insert(v);
            }
        }
        return Ok(values.into_iter().collect());
    }
    let mut cat = Catalog::new(qs.clone(), range);
    match cat.stream_kind(name).await? {
        StreamKind::Service => values.extend(cat.services().await?.iter().filter(|s| !s.is_empty()).cloned()),
        StreamKind::Level => {
            let sev = cat.severities().await?.to_vec();
            values.extend(sev.iter().filter(|s| !s.is_empty()).cloned());
            if sev.iter().any(|s| s.is_empty()) {
                for (n, _, _) in DERIVED_LEVELS {
                    if derived_level_present(qs, range, n).await? {
                        values.insert(n.to_string());
                    }
                }
            }
        }
        StreamKind::Resource(keys) => {
            for k in keys {
                match cat.resource_values(&k).await? {
                    Some(v) => values.extend(v.iter().cloned()),
                    None => {
                        // Too many to list: the most frequent ones.
                        let top = qs
                            .attribute_values(
                                obsbox_storage::Signal::Logs,
                                obsbox_storage::AttrScope::Resource,
                                k.clone(),
                                range,
                                super::plan::MAX_VALUES,
                            )
                            .await?;
                        values.extend(top.into_iter().filter_map(|(v, _)| match v {
                            obsbox_storage::AttrValue::Str(s) if !s.is_empty() => Some(s),
                            _ => None,
                        }));
                    }
                }
            }
        }
        StreamKind::Absent => {}
    }
    Ok(values.into_iter().collect())
}

/// `GET /series`: distinct stream label sets matching any of the selectors, found among the
/// newest lines of each service.
pub(crate) async fn series(
    qs: &QueryService,
    range: TimeRange,
    selectors: &[Vec<Matcher>],
) -> Result<Vec<Labels>, QueryError> {
    let mut out = BTreeSet::new();
    for ms in selectors {
        let mut cat = Catalog::new(qs.clone(), range);
        let pd = pushdown(&selector_expr(ms), &mut cat).await?;
        let service_ms: Vec<&Matcher> = ms.iter().filter(|m| m.name == SERVICE_LABEL).collect();
        let services: Vec<String> = cat
            .services()
            .await?
            .iter()
            .filter(|s| service_ms.iter().all(|m| m.matches(s)))
            .take(SERIES_SERVICES)
            .cloned()
            .collect();
        for s in services {
            let pred = and(vec![pd.pred.clone(), LogPredicate::Service(s)]);
            let entries =
                qs.find_logs(LogQuery { predicate: pred, time: range, limit: SERIES_LINES_PER_SERVICE }).await?;
            for e in &entries {
                let l = stream_labels(e);
                if selector_matches(ms, &l) {
                    out.insert(l);
                }
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// `GET /index/stats` figures.
pub(crate) struct IndexStats {
    /// Distinct streams (in the sample).
    pub streams: u64,
    /// Reported equal to `streams` (obsbox has no chunks).
    pub chunks: u64,
    /// Matching records (exact when the selector pushes down exactly).
    pub entries: u64,
    /// Estimated: entries times the sample's mean line length.
    pub bytes: u64,
}

/// Mean line length of the sample, 0 when empty.
fn mean_bytes(sample: &[(Labels, LogEntry)]) -> f64 {
    if sample.is_empty() {
        return 0.0;
    }
    sample.iter().map(|(_, e)| line(&e.record).len() as f64).sum::<f64>() / sample.len() as f64
}

/// `GET /index/stats`.
pub(crate) async fn index_stats(
    qs: &QueryService,
    range: TimeRange,
    matchers: &[Matcher],
) -> Result<IndexStats, QueryError> {
    let mut cat = Catalog::new(qs.clone(), range);
    let pd = pushdown(&selector_expr(matchers), &mut cat).await?;
    let entries = count(qs, &pd.pred, range).await?;
    let sample = sample(qs, range, matchers, 1000).await?;
    let streams = sample.iter().map(|(l, _)| l).collect::<BTreeSet<_>>().len() as u64;
    let streams = if entries > 0 { streams.max(1) } else { 0 };
    Ok(IndexStats { streams, chunks: streams, entries, bytes: (entries as f64 * mean_bytes(&sample)).round() as u64 })
}

/// `GET /index/volume[_range]`: estimated bytes per group of streams, computed as a
/// `sum by (labels) (count_over_time(selector [window]))` times the mean line length.
pub(crate) async fn volume(
    qs: &QueryService,
    range: TimeRange,
    matchers: &[Matcher],
    target_labels: &[String],
    grid: &eval::Grid,
    window_ns: u64,
) -> Result<Vec<eval::Series>, QueryError> {
    let expr = super::logql::MetricExpr::Agg {
        op: super::logql::AggOp::Sum,
        param: None,
        grouping: Some(super::logql::Grouping { without: false, labels: target_labels.to_vec() }),
        inner: Box::new(super::logql::MetricExpr::Range {
            func: super::logql::RangeFn::CountOverTime,
            log: selector_expr(matchers),
            range_ns: window_ns,
            range_raw: String::new(),
        }),
    };
    let mut stats = Stats::new();
    let eval::Value::Vector(mut series) = eval::metric_query(qs, &expr, grid, &mut stats).await? else {
        return Ok(Vec::new());
    };
    let mean = mean_bytes(&sample(qs, range, matchers, 1000).await?);
    for s in &mut series {
        for v in s.values.iter_mut().flatten() {
            *v = (*v * mean).round();
        }
    }
    Ok(series)
}

/// `GET /detected_labels`: stream labels of the sampled lines with their cardinality.
pub(crate) async fn detected_labels(
    qs: &QueryService,
    range: TimeRange,
    matchers: &[Matcher],
) -> Result<Vec<(String, usize)>, QueryError> {
    let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (l, _) in sample(qs, range, matchers, SAMPLE_LINES).await? {
        for (k, v) in l {
            values.entry(k).or_default().insert(v);
        }
    }
    Ok(values.into_iter().map(|(k, v)| (k, v.len())).collect())
}

/// One field `detected_fields` reports.
pub(crate) struct DetectedField {
    /// Label name.
    pub label: String,
    /// `string`, `int`, `float`, `boolean`, `duration` or `bytes`.
    pub kind: &'static str,
    /// Distinct values seen.
    pub cardinality: usize,
    /// Parsers that produce it (`json`, `logfmt`); empty for structured metadata.
    pub parsers: BTreeSet<&'static str>,
}

fn value_kind(v: &str) -> &'static str {
    if v == "true" || v == "false" {
        "boolean"
    } else if v.parse::<i64>().is_ok() {
        "int"
    } else if v.parse::<f64>().is_ok() {
        "float"
    } else if parse_duration(v).is_some() {
        "duration"
    } else if parse_bytes(v).is_some() {
        "bytes"
    } else {
        "string"
    }
}

/// `GET /detected_fields`: fields of the sampled lines that are not stream labels: structured
/// metadata, and what `| json` (lines starting with `{`) or `| logfmt` (other lines) extracts.
pub(crate) async fn detected_fields(
    qs: &QueryService,
    range: TimeRange,
    log: Option<&LogExpr>,
    limit: usize,
) -> Result<Vec<DetectedField>, QueryError> {
    let (pred, exact_log) = match log {
        Some(l) => {
            let mut cat = Catalog::new(qs.clone(), range);
            (pushdown(l, &mut cat).await?.pred, Some(l))
        }
        None => (LogPredicate::All, None),
    };
    let entries = qs.find_logs(LogQuery { predicate: pred, time: range, limit }).await?;
    let mut stats = Stats::new();
    let mut fields: HashMap<String, (BTreeSet<String>, &'static str, BTreeSet<&'static str>)> = HashMap::new();
    let mut add = |name: String, value: String, parser: Option<&'static str>| {
        let kind = value_kind(&value);
        let f = fields.entry(name).or_insert_with(|| (BTreeSet::new(), kind, BTreeSet::new()));
        if f.1 != kind {
            f.1 = if matches!((f.1, kind), ("int", "float") | ("float", "int")) { "float" } else { "string" };
        }
        f.0.insert(value);
        if let Some(p) = parser {
            f.2.insert(p);
        }
    };
    for e in &entries {
        let (labels, text) = match exact_log {
            Some(l) => match eval::process(l, e, &mut stats) {
                Some((_, labels, text)) => (labels, text),
                None => continue,
            },
            None => {
                let mut labels = stream_labels(e);
                super::labels::add_metadata(&e.record, &mut labels);
                (labels, line(&e.record))
            }
        };
        let stream = stream_labels(e);
        for (k, v) in labels {
            if !stream.contains_key(&k) && !k.starts_with("__") {
                add(k, v, None);
            }
        }
        if text.trim_start().starts_with('{') {
            if let Ok(serde_json::Value::Object(o)) = json_doc(&text, e.record.body.as_ref()) {
                let mut pairs = Vec::new();
                flatten_json("", &o, &mut pairs);
                for (k, v) in pairs {
                    add(k, v, Some("json"));
                }
            }
        } else {
            for (k, v) in parse_logfmt(&text).0 {
                if let Some(v) = v.filter(|v| !v.is_empty()) {
                    add(sanitize(&k), v, Some("logfmt"));
                }
            }
        }
    }
    let mut out: Vec<DetectedField> = fields
        .into_iter()
        .map(|(label, (vals, kind, parsers))| DetectedField { label, kind, cardinality: vals.len(), parsers })
        .collect();
    out.sort_by(|a, b| a.label.cmp(&b.label));
    Ok(out)
}
