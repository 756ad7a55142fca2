//! Pushdown: which part of a LogQL query the store evaluates (a [`LogPredicate`]) and whether
//! that predicate is exact or only a superset that the pipeline filters again in memory.
//!
//! Rule: the pushed predicate always selects a superset of the lines the query keeps, so every
//! fetched line is run through the full pipeline and results are exact either way. When the
//! predicate is also *exact*, metric queries may count with the store's histogram without
//! reading a single line.

use std::collections::HashMap;

use obsbox_storage::{AttrScope, AttrValue, LogField, LogPredicate, Signal, TimeRange};

use super::labels::{DERIVED_LEVELS, LEVEL_LABEL, SERVICE_LABEL, resource_label, sanitize};
use super::logql::{LabelFilter, LineFilter, LineOp, LogExpr, MatchOp, Matcher, Stage};
use crate::{QueryError, QueryService};

/// Most distinct values fetched to expand a regular expression or a grouping into equalities.
pub(crate) const MAX_VALUES: usize = 1000;
/// Words of one line filter pushed into the full-text index.
const MAX_PUSHED_WORDS: usize = 8;
/// Tokens this long (bytes) or longer are not in the full-text index (tantivy's default
/// tokenizer drops them).
const MAX_TOKEN_LEN: usize = 40;
/// Upper-case words tantivy's query parser reads as operators.
const QUERY_KEYWORDS: &[&str] = &["AND", "OR", "NOT", "IN", "TO"];

/// What the store is asked for.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Pushdown {
    /// Selects a superset of the lines the query keeps.
    pub pred: LogPredicate,
    /// Selects exactly those lines.
    pub exact: bool,
}

/// Where a label's value comes from, among the stream labels.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum StreamKind {
    /// `service_name`
    Service,
    /// `level`
    Level,
    /// A resource attribute label: the attribute keys that sanitize to it.
    Resource(Vec<String>),
    /// No stream has it.
    Absent,
}

/// Distinct values and keys of the query's time range, fetched once per query as needed.
pub(crate) struct Catalog {
    qs: QueryService,
    time: TimeRange,
    resource_keys: Option<Vec<String>>,
    item_keys: Option<Vec<String>>,
    services: Option<Vec<String>>,
    severities: Option<Vec<String>>,
    resource_values: HashMap<String, Option<Vec<String>>>,
}

impl Catalog {
    /// A catalog of `time`.
    pub fn new(qs: QueryService, time: TimeRange) -> Catalog {
        Catalog {
            qs,
            time,
            resource_keys: None,
            item_keys: None,
            services: None,
            severities: None,
            resource_values: HashMap::new(),
        }
    }

    /// Resource attribute keys.
    pub async fn resource_keys(&mut self) -> Result<&[String], QueryError> {
        if self.resource_keys.is_none() {
            let keys = self.qs.attribute_keys(Signal::Logs, AttrScope::Resource, self.time).await?;
            self.resource_keys = Some(keys);
        }
        Ok(self.resource_keys.as_deref().unwrap_or_default())
    }

    async fn item_keys(&mut self) -> Result<&[String], QueryError> {
        if self.item_keys.is_none() {
            let keys = self.qs.attribute_keys(Signal::Logs, AttrScope::Item, self.time).await?;
            self.item_keys = Some(keys);
        }
        Ok(self.item_keys.as_deref().unwrap_or_default())
    }

    /// `service.name` values (`""` for records without one).
    pub async fn services(&mut self) -> Result<&[String], QueryError> {
        if self.services.is_none() {
            self.services = Some(self.qs.log_field_values(LogField::Service, self.time).await?);
        }
        Ok(self.services.as_deref().unwrap_or_default())
    }

    /// Severity texts (`""` for records without one).
    pub async fn severities(&mut self) -> Result<&[String], QueryError> {
        if self.severities.is_none() {
            self.severities = Some(self.qs.log_field_values(LogField::SeverityText, self.time).await?);
        }
        Ok(self.severities.as_deref().unwrap_or_default())
    }

    /// String values of a resource attribute; `None` when there are too many to list.
    pub async fn resource_values(&mut self, key: &str) -> Result<Option<&[String]>, QueryError> {
        if !self.resource_values.contains_key(key) {
            let vals = self
                .qs
                .attribute_values(Signal::Logs, AttrScope::Resource, key.to_string(), self.time, MAX_VALUES + 1)
                .await?;
            let listed = (vals.len() <= MAX_VALUES).then(|| {
                vals.into_iter()
                    .filter_map(|(v, _)| match v {
                        AttrValue::Str(s) if !s.is_empty() => Some(s),
                        _ => None,
                    })
                    .collect()
            });
            self.resource_values.insert(key.to_string(), listed);
        }
        Ok(self.resource_values.get(key).and_then(|v| v.as_deref()))
    }

    /// Where a stream label comes from.
    pub async fn stream_kind(&mut self, name: &str) -> Result<StreamKind, QueryError> {
        Ok(match name {
            SERVICE_LABEL => StreamKind::Service,
            LEVEL_LABEL => StreamKind::Level,
            _ => {
                let keys: Vec<String> = self
                    .resource_keys()
                    .await?
                    .iter()
                    .filter(|k| resource_label(k).as_deref() == Some(name))
                    .cloned()
                    .collect();
                if keys.is_empty() { StreamKind::Absent } else { StreamKind::Resource(keys) }
            }
        })
    }

    /// Record attribute keys that give the metadata label `name`, plus whether the record's
    /// trace or span id does.
    pub async fn metadata_sources(&mut self, name: &str) -> Result<(Vec<String>, bool), QueryError> {
        let keys = self.item_keys().await?.iter().filter(|k| sanitize(k) == name).cloned().collect();
        Ok((keys, name == "trace_id" || name == "span_id"))
    }

    /// Fetches what translating `m` needs (value lists for regular expressions).
    async fn prepare(&mut self, m: &Matcher, kind: &StreamKind) -> Result<(), QueryError> {
        if matches!(m.op, MatchOp::Re | MatchOp::NotRe) {
            match kind {
                StreamKind::Service => {
                    self.services().await?;
                }
                StreamKind::Level => {
                    self.severities().await?;
                }
                StreamKind::Resource(keys) if keys.len() == 1 => {
                    self.resource_values(&keys[0]).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn none() -> LogPredicate {
    LogPredicate::Or(Vec::new())
}

fn not(p: LogPredicate) -> LogPredicate {
    match p {
        LogPredicate::All => none(),
        LogPredicate::Or(v) if v.is_empty() => LogPredicate::All,
        LogPredicate::Not(inner) => *inner,
        p => LogPredicate::Not(Box::new(p)),
    }
}

/// `And` without `All`s, flattened; `All` when empty.
pub(crate) fn and(parts: Vec<LogPredicate>) -> LogPredicate {
    let mut out = Vec::new();
    for p in parts {
        match p {
            LogPredicate::All => {}
            LogPredicate::Or(v) if v.is_empty() => return none(),
            LogPredicate::And(v) => out.extend(v),
            p => out.push(p),
        }
    }
    match out.len() {
        0 => LogPredicate::All,
        1 => out.pop().unwrap_or(LogPredicate::All),
        _ => LogPredicate::And(out),
    }
}

fn or(parts: Vec<LogPredicate>) -> LogPredicate {
    if parts.contains(&LogPredicate::All) {
        return LogPredicate::All;
    }
    let mut out: Vec<LogPredicate> = Vec::new();
    for p in parts {
        match p {
            LogPredicate::Or(v) => out.extend(v),
            p => out.push(p),
        }
    }
    if out.len() == 1 { out.pop().unwrap_or_else(none) } else { LogPredicate::Or(out) }
}

fn severity_between(lo: i32, hi: i32) -> LogPredicate {
    and(vec![LogPredicate::MinSeverity(lo), not(LogPredicate::MinSeverity(hi + 1))])
}

/// Exactly the records whose `level` label is `v` (`""`: no level).
pub(crate) fn level_eq(v: &str) -> LogPredicate {
    let no_text = LogPredicate::SeverityText(String::new());
    if v.is_empty() {
        return and(vec![no_text, not(severity_between(1, 24))]);
    }
    match DERIVED_LEVELS.iter().find(|(n, _, _)| *n == v) {
        Some((_, lo, hi)) => {
            or(vec![LogPredicate::SeverityText(v.to_string()), and(vec![no_text, severity_between(*lo, *hi)])])
        }
        None => LogPredicate::SeverityText(v.to_string()),
    }
}

/// Every value the `level` label can take in the catalog's range (`""` included).
pub(crate) fn level_values(severities: &[String]) -> Vec<String> {
    let mut vals: Vec<String> = severities.iter().filter(|s| !s.is_empty()).cloned().collect();
    if severities.iter().any(|s| s.is_empty()) {
        vals.extend(DERIVED_LEVELS.iter().map(|(n, _, _)| n.to_string()));
        vals.push(String::new());
    }
    vals.sort();
    vals.dedup();
    vals
}

fn constant(m: &Matcher) -> (LogPredicate, bool) {
    (if m.matches("") { LogPredicate::All } else { none() }, true)
}

/// The predicate of a matcher on a stream label, and whether it is exact. Needs
/// [`Catalog::prepare`] first.
fn stream_matcher(m: &Matcher, kind: &StreamKind, cat: &Catalog) -> (LogPredicate, bool) {
    let regex = matches!(m.op, MatchOp::Re | MatchOp::NotRe);
    match kind {
        StreamKind::Absent => constant(m),
        StreamKind::Service => {
            if !regex {
                let p = LogPredicate::Service(m.value.clone());
                return (if m.op == MatchOp::Eq { p } else { not(p) }, true);
            }
            match &cat.services {
                Some(vals) => {
                    let mut hits: Vec<&String> = vals.iter().filter(|v| m.matches(v)).collect();
                    if !vals.iter().any(|v| v.is_empty()) && m.matches("") {
                        // Records without a service are indexed under "" too.
                        hits.push(&EMPTY);
                    }
                    (or(hits.into_iter().map(|v| LogPredicate::Service(v.clone())).collect()), true)
                }
                None => (LogPredicate::All, false),
            }
        }
        StreamKind::Level => {
            if !regex {
                let p = level_eq(&m.value);
                return (if m.op == MatchOp::Eq { p } else { not(p) }, true);
            }
            match &cat.severities {
                Some(sev) => {
                    let mut vals = level_values(sev);
                    if !vals.iter().any(|v| v.is_empty()) {
                        vals.push(String::new());
                    }
                    (or(vals.iter().filter(|v| m.matches(v)).map(|v| level_eq(v)).collect()), true)
                }
                None => (LogPredicate::All, false),
            }
        }
        StreamKind::Resource(keys) => {
            let single = keys.len() == 1;
            let eq = |v: &str| {
                or(keys
                    .iter()
                    .map(|k| LogPredicate::Attribute {
                        scope: AttrScope::Resource,
                        key: k.clone(),
                        value: AttrValue::Str(v.to_string()),
                    })
                    .collect())
            };
            match m.op {
                MatchOp::Eq if m.value.is_empty() => (LogPredicate::All, false),
                MatchOp::Eq => (eq(&m.value), single),
                MatchOp::Ne if m.value.is_empty() => (
                    or(keys
                        .iter()
                        .map(|k| LogPredicate::AttributeExists { scope: AttrScope::Resource, key: k.clone() })
                        .collect()),
                    false,
                ),
                MatchOp::Ne if single => (not(eq(&m.value)), true),
                MatchOp::Ne => (LogPredicate::All, false),
                MatchOp::Re | MatchOp::NotRe => {
                    if !single || m.matches("") {
                        return (LogPredicate::All, false);
                    }
                    let Some(Some(vals)) = cat.resource_values.get(&keys[0]) else {
                        return (LogPredicate::All, false);
                    };
                    if m.op == MatchOp::Re {
                        (or(vals.iter().filter(|v| m.matches(v)).map(|v| eq(v)).collect()), true)
                    } else {
                        // Records without the label match `!~` too.
                        (LogPredicate::All, false)
                    }
                }
            }
        }
    }
}

static EMPTY: String = String::new();

fn typed_values(v: &str) -> Vec<AttrValue> {
    let mut out = vec![AttrValue::Str(v.to_string())];
    if let Ok(i) = v.parse::<i64>() {
        out.push(AttrValue::Int(i));
    }
    if let Ok(f) = v.parse::<f64>() {
        out.push(AttrValue::Float(f));
    }
    if let Ok(b) = v.parse::<bool>() {
        out.push(AttrValue::Bool(b));
    }
    out
}

/// The predicate of a metadata matcher (`name` from record attributes or ids).
fn metadata_matcher(m: &Matcher, keys: &[String], id: bool) -> (LogPredicate, bool) {
    if m.op != MatchOp::Eq || m.value.is_empty() {
        return (LogPredicate::All, false);
    }
    let v = &m.value;
    let mut parts = Vec::new();
    let mut exact_sources = 0;
    let mut sources = 0;
    if id {
        sources += 1;
        let want = if m.name == "trace_id" { 16 } else { 8 };
        match hex::decode(v) {
            Ok(b) if b.len() == want => {
                parts.push(if want == 16 { LogPredicate::TraceId(b) } else { LogPredicate::SpanId(b) });
                if *v == v.to_lowercase() {
                    exact_sources += 1;
                }
            }
            _ => exact_sources += 1,
        }
    }
    for k in keys {
        sources += 1;
        let typed = typed_values(v);
        if typed.len() == 1 {
            exact_sources += 1;
        }
        for value in typed {
            parts.push(LogPredicate::Attribute { scope: AttrScope::Item, key: k.clone(), value });
        }
    }
    (or(parts), sources == 1 && exact_sources == 1)
}

/// Words of a `|=` literal that every line containing the literal has as whole index tokens:
/// alphanumeric runs with a separator on both sides inside the literal.
pub(crate) fn bounded_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() {
            start.get_or_insert(i);
        } else if let Some(s) = start.take() {
            let w = &text[s..i];
            if s > 0 && w.len() < MAX_TOKEN_LEN && !QUERY_KEYWORDS.contains(&w) {
                words.push(w.to_string());
            }
        }
    }
    words.dedup();
    words.truncate(MAX_PUSHED_WORDS);
    words
}

fn line_pred(f: &LineFilter) -> (LogPredicate, bool) {
    match f.op {
        LineOp::Contains => {
            if f.alts.iter().any(|a| a.text.is_empty()) {
                return (LogPredicate::All, true);
            }
            let mut alts = Vec::new();
            for a in &f.alts {
                let words = bounded_words(&a.text);
                if words.is_empty() {
                    return (LogPredicate::All, false);
                }
                alts.push(LogPredicate::Text(words.join(" ")));
            }
            (or(alts), false)
        }
        LineOp::NotContains if f.alts.iter().any(|a| a.text.is_empty()) => (none(), true),
        // A regular expression can match only some lines whatever it is (`^$`): post-filtered.
        _ => (LogPredicate::All, false),
    }
}

/// Where each label named in the query's pushable parts comes from.
#[derive(Default)]
struct Resolved {
    kinds: HashMap<String, (StreamKind, Vec<String>, bool)>,
}

fn filter_matchers<'a>(f: &'a LabelFilter, out: &mut Vec<&'a Matcher>) {
    match f {
        LabelFilter::And(a, b) | LabelFilter::Or(a, b) => {
            filter_matchers(a, out);
            filter_matchers(b, out);
        }
        LabelFilter::Str(m) => out.push(m),
        LabelFilter::Num { .. } => {}
    }
}

fn filter_pred(f: &LabelFilter, r: &Resolved, cat: &Catalog) -> (LogPredicate, bool) {
    match f {
        LabelFilter::And(a, b) => {
            let (pa, ea) = filter_pred(a, r, cat);
            let (pb, eb) = filter_pred(b, r, cat);
            (and(vec![pa, pb]), ea && eb)
        }
        LabelFilter::Or(a, b) => {
            let (pa, ea) = filter_pred(a, r, cat);
            let (pb, eb) = filter_pred(b, r, cat);
            (or(vec![pa, pb]), ea && eb)
        }
        LabelFilter::Num { .. } => (LogPredicate::All, false),
        LabelFilter::Str(m) => {
            let Some((kind, keys, id)) = r.kinds.get(&m.name) else { return (LogPredicate::All, false) };
            if keys.is_empty() && !id {
                return stream_matcher(m, kind, cat);
            }
            if *kind == StreamKind::Absent {
                return metadata_matcher(m, keys, *id);
            }
            // The label may come from the stream or, where the stream lacks it, from metadata.
            if m.op == MatchOp::Eq && !m.value.is_empty() {
                let (ps, _) = stream_matcher(m, kind, cat);
                let (pm, _) = metadata_matcher(m, keys, *id);
                return (or(vec![ps, pm]), false);
            }
            (LogPredicate::All, false)
        }
    }
}

/// Translates a log query's selector and pushable stages into a store predicate.
pub(crate) async fn pushdown(log: &LogExpr, cat: &mut Catalog) -> Result<Pushdown, QueryError> {
    let mut parts = Vec::new();
    let mut exact = true;
    for m in &log.matchers {
        let kind = cat.stream_kind(&m.name).await?;
        cat.prepare(m, &kind).await?;
        let (p, e) = stream_matcher(m, &kind, cat);
        parts.push(p);
        exact &= e;
    }
    // Label filters are pushed only before the first stage that changes labels.
    let mut labels_changed = false;
    for stage in &log.stages {
        match stage {
            Stage::Line(f) => {
                let (p, e) = line_pred(f);
                parts.push(p);
                exact &= e;
            }
            Stage::Json(_) | Stage::Logfmt { .. } | Stage::Drop(_) | Stage::Keep(_) => labels_changed = true,
            Stage::Label(_) if labels_changed => exact = false,
            Stage::Label(f) => {
                let mut ms = Vec::new();
                filter_matchers(f, &mut ms);
                let mut r = Resolved::default();
                for m in ms {
                    let kind = cat.stream_kind(&m.name).await?;
                    cat.prepare(m, &kind).await?;
                    let (keys, id) = cat.metadata_sources(&m.name).await?;
                    r.kinds.insert(m.name.clone(), (kind, keys, id));
                }
                let (p, e) = filter_pred(f, &r, cat);
                parts.push(p);
                exact &= e;
            }
        }
    }
    Ok(Pushdown { pred: and(parts), exact })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_words_are_whole_tokens_only() {
        assert_eq!(bounded_words("error"), Vec::<String>::new(), "the edges may be partial tokens");
        assert_eq!(bounded_words("level=error msg"), vec!["error"]);
        assert_eq!(bounded_words(" GET /api/users HTTP"), vec!["GET", "api", "users"]);
        assert_eq!(bounded_words("x AND y z"), vec!["y"], "query keywords are skipped");
        let long = format!(" {} x", "a".repeat(40));
        assert_eq!(bounded_words(&long), Vec::<String>::new(), "the index drops long tokens");
    }

    #[test]
    fn level_predicates() {
        assert_eq!(level_eq("ERROR"), LogPredicate::SeverityText("ERROR".into()));
        let info = level_eq("info");
        assert!(matches!(info, LogPredicate::Or(ref v) if v.len() == 2));
        assert_eq!(
            level_values(&["".into(), "ERROR".into(), "info".into()]),
            vec!["", "ERROR", "debug", "error", "fatal", "info", "trace", "warn"]
        );
    }

    mod with_store {
        use std::sync::Arc;

        use obsbox_storage::{Batch, MemStore, Writer};
        use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
        use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
        use opentelemetry_proto::tonic::resource::v1::Resource;

        use super::super::super::logql::{Expr, parse};
        use super::*;

        fn kv(k: &str, v: Value) -> KeyValue {
            KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
        }

        async fn service() -> QueryService {
            let store = Arc::new(MemStore::new());
            let record = LogRecord {
                time_unix_nano: 10,
                severity_text: "INFO".into(),
                attributes: vec![kv("http.method", Value::StringValue("GET".into()))],
                ..Default::default()
            };
            let req = ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: Some(Resource {
                        attributes: vec![
                            kv("service.name", Value::StringValue("api".into())),
                            kv("deployment.environment", Value::StringValue("prod".into())),
                        ],
                        ..Default::default()
                    }),
                    scope_logs: vec![ScopeLogs { log_records: vec![record], ..Default::default() }],
                    ..Default::default()
                }],
            };
            store.write(Batch::Logs(req)).await.unwrap();
            QueryService::new(store)
        }

        async fn pd(qs: &QueryService, q: &str) -> Pushdown {
            let Expr::Log(l) = parse(q).unwrap() else { panic!("{q}") };
            pushdown(&l, &mut Catalog::new(qs.clone(), TimeRange::ALL)).await.unwrap()
        }

        fn attr(scope: AttrScope, key: &str, v: &str) -> LogPredicate {
            LogPredicate::Attribute { scope, key: key.into(), value: AttrValue::Str(v.into()) }
        }

        #[tokio::test]
        async fn selectors_push_down_exactly() {
            let qs = service().await;
            let svc = LogPredicate::Service("api".into());
            assert_eq!(pd(&qs, r#"{service_name="api"}"#).await, Pushdown { pred: svc.clone(), exact: true });
            assert_eq!(pd(&qs, r#"{service_name=~"a.*"}"#).await, Pushdown { pred: svc.clone(), exact: true });
            assert_eq!(
                pd(&qs, r#"{deployment_environment="prod", service_name!~"a.*"}"#).await,
                Pushdown {
                    pred: LogPredicate::And(vec![
                        attr(AttrScope::Resource, "deployment.environment", "prod"),
                        LogPredicate::Service(String::new())
                    ]),
                    exact: true
                },
                "only records without a service are left"
            );
            let env = attr(AttrScope::Resource, "deployment.environment", "prod");
            assert_eq!(
                pd(&qs, r#"{deployment_environment="prod"}"#).await,
                Pushdown { pred: env.clone(), exact: true }
            );
            assert_eq!(pd(&qs, r#"{deployment_environment=~"pr.*"}"#).await, Pushdown { pred: env, exact: true });
            assert_eq!(
                pd(&qs, r#"{service_name="api", nope="x"}"#).await,
                Pushdown { pred: none(), exact: true },
                "a label no stream has never equals a non-empty value"
            );
            assert_eq!(pd(&qs, r#"{level="INFO"}"#).await, Pushdown { pred: level_eq("INFO"), exact: true });
        }

        #[tokio::test]
        async fn line_and_label_filters() {
            let qs = service().await;
            let svc = LogPredicate::Service("api".into());
            assert_eq!(
                pd(&qs, r#"{service_name="api"} |= "error""#).await,
                Pushdown { pred: svc.clone(), exact: false },
                "a bare word may be part of a longer token: not pushed"
            );
            assert_eq!(
                pd(&qs, r#"{service_name="api"} |= "level=error msg""#).await,
                Pushdown {
                    pred: LogPredicate::And(vec![svc.clone(), LogPredicate::Text("error".into())]),
                    exact: false
                }
            );
            assert_eq!(
                pd(&qs, r#"{service_name="api"} | http_method="GET""#).await,
                Pushdown {
                    pred: LogPredicate::And(vec![svc.clone(), attr(AttrScope::Item, "http.method", "GET")]),
                    exact: true
                }
            );
            assert_eq!(
                pd(&qs, r#"{service_name="api"} | json | http_method="GET""#).await,
                Pushdown { pred: svc.clone(), exact: false },
                "after a parser the label may come from the line"
            );
            assert_eq!(pd(&qs, r#"{service_name="api"} | status > 5"#).await, Pushdown { pred: svc, exact: false });
        }
    }

    #[test]
    fn simplification() {
        assert_eq!(and(vec![LogPredicate::All, LogPredicate::All]), LogPredicate::All);
        assert_eq!(and(vec![LogPredicate::All, none()]), none());
        assert_eq!(or(vec![none(), LogPredicate::Service("a".into())]), LogPredicate::Service("a".into()));
        assert_eq!(not(LogPredicate::All), none());
    }
}
