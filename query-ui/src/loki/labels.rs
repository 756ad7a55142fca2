//! How a stored log record looks through Loki's eyes: its line, its labels, and the pipeline
//! stages that filter lines and add labels (`docs/logql.md`, "Labels").

use std::collections::{BTreeMap, HashSet};

use obsbox_storage::LogEntry;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;

use super::logql::{LabelFilter, LabelSel, NumLit, PathSeg, Stage, parse_bytes, parse_duration};

/// A label set, sorted by name.
pub(crate) type Labels = BTreeMap<String, String>;

/// The label made from the resource's `service.name`.
pub(crate) const SERVICE_LABEL: &str = "service_name";
/// The label made from the record's severity.
pub(crate) const LEVEL_LABEL: &str = "level";
/// Set by a pipeline stage that failed on a line.
pub(crate) const ERROR_LABEL: &str = "__error__";
/// Details of [`ERROR_LABEL`].
pub(crate) const ERROR_DETAILS_LABEL: &str = "__error_details__";

/// Level names derived from an OTLP severity number when the record has no severity text:
/// (name, lowest number, highest number).
pub(crate) const DERIVED_LEVELS: [(&str, i32, i32); 6] =
    [("trace", 1, 4), ("debug", 5, 8), ("info", 9, 12), ("warn", 13, 16), ("error", 17, 20), ("fatal", 21, 24)];

/// A label name made from an attribute key or a parsed field name, as Loki does: every
/// character outside `[A-Za-z0-9_]` becomes `_`, and a leading digit gets a `_` prefix.
pub(crate) fn sanitize(key: &str) -> String {
    let key = key.trim();
    let mut out = String::with_capacity(key.len() + 1);
    if key.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }));
    out
}

/// The record's time: its timestamp, or its observed time when the timestamp is 0 (as the store
/// indexes it).
pub(crate) fn log_time(r: &LogRecord) -> u64 {
    obsbox_storage::log_time(r)
}

/// The log line: a string body as it is; other bodies rendered as the store indexes them
/// (`{key: value, ...}`, `[a, b]`), so full-text pushdown sees the same words.
pub(crate) fn line(r: &LogRecord) -> String {
    r.body.as_ref().map(obsbox_storage::any_value_text).unwrap_or_default()
}

fn string_value(kv: &KeyValue) -> Option<&str> {
    match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// The `level` label: the severity text, else a name derived from the severity number.
pub(crate) fn level(r: &LogRecord) -> Option<&str> {
    if !r.severity_text.is_empty() {
        return Some(&r.severity_text);
    }
    DERIVED_LEVELS.iter().find(|(_, lo, hi)| (*lo..=*hi).contains(&r.severity_number)).map(|(n, _, _)| *n)
}

/// Whether a resource attribute key gives a stream label (not `service.name`, which gives
/// `service_name`, nor a key colliding with the two fixed labels).
pub(crate) fn resource_label(key: &str) -> Option<String> {
    if key == "service.name" {
        return None;
    }
    let l = sanitize(key);
    (l != SERVICE_LABEL && l != LEVEL_LABEL && !l.is_empty()).then_some(l)
}

/// The stream labels of a record: `service_name`, `level`, and the resource's string
/// attributes with sanitized keys (the first attribute wins when two keys sanitize alike).
pub(crate) fn stream_labels(e: &LogEntry) -> Labels {
    let mut labels = Labels::new();
    if let Some(s) = e.resource.attributes.iter().find(|kv| kv.key == "service.name").and_then(string_value) {
        labels.insert(SERVICE_LABEL.to_string(), s.to_string());
    }
    if let Some(l) = level(&e.record) {
        labels.insert(LEVEL_LABEL.to_string(), l.to_string());
    }
    for kv in &e.resource.attributes {
        if let (Some(name), Some(v)) = (resource_label(&kv.key), string_value(kv)) {
            labels.entry(name).or_insert_with(|| v.to_string());
        }
    }
    labels
}

/// Adds the record's "structured metadata" labels: its own attributes (strings, numbers and
/// booleans; sanitized keys) and `trace_id` / `span_id` in hex. Stream labels win clashes.
pub(crate) fn add_metadata(r: &LogRecord, labels: &mut Labels) {
    if !r.trace_id.is_empty() {
        labels.entry("trace_id".into()).or_insert_with(|| hex::encode(&r.trace_id));
    }
    if !r.span_id.is_empty() {
        labels.entry("span_id".into()).or_insert_with(|| hex::encode(&r.span_id));
    }
    for kv in &r.attributes {
        let Some(v) = metadata_value(kv.value.as_ref()) else { continue };
        let name = sanitize(&kv.key);
        if !name.is_empty() && !v.is_empty() {
            labels.entry(name).or_insert(v);
        }
    }
}

/// How a record attribute value reads as a label value; `None` for arrays, maps and bytes.
pub(crate) fn metadata_value(v: Option<&AnyValue>) -> Option<String> {
    Some(match v?.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(f) => f.to_string(),
        Value::BoolValue(b) => b.to_string(),
        _ => return None,
    })
}

/// Labels set by parser stages; a name clashing with a label the record already had gets the
/// `_extracted` suffix, as in Loki.
struct Parsed<'a> {
    labels: &'a mut Labels,
    parsed: HashSet<String>,
}

impl Parsed<'_> {
    fn set(&mut self, name: String, value: String) {
        if name.is_empty() {
            return;
        }
        let name = if self.labels.contains_key(&name) && !self.parsed.contains(&name) {
            format!("{name}_extracted")
        } else {
            name
        };
        self.parsed.insert(name.clone());
        self.labels.insert(name, value);
    }
}

fn set_error(labels: &mut Labels, kind: &str, details: String) {
    labels.insert(ERROR_LABEL.into(), kind.into());
    labels.insert(ERROR_DETAILS_LABEL.into(), details);
}

/// Runs the pipeline over one line; `false` when a filter drops it. `labels` holds the record's
/// labels on entry and the line's labels on return.
pub(crate) fn run_pipeline(stages: &[Stage], line: &str, body: Option<&AnyValue>, labels: &mut Labels) -> bool {
    let mut parsed: HashSet<String> = HashSet::new();
    for stage in stages {
        match stage {
            Stage::Line(f) => {
                if !f.keeps(line) {
                    return false;
                }
            }
            Stage::Json(params) => {
                let mut p = Parsed { labels, parsed: std::mem::take(&mut parsed) };
                json_stage(params, line, body, &mut p);
                parsed = p.parsed;
            }
            Stage::Logfmt { strict, keep_empty, params } => {
                let mut p = Parsed { labels, parsed: std::mem::take(&mut parsed) };
                logfmt_stage(*strict, *keep_empty, params, line, &mut p);
                parsed = p.parsed;
            }
            Stage::Label(f) => {
                if !label_filter(f, labels) {
                    return false;
                }
            }
            Stage::Drop(sels) => labels.retain(|k, v| !sels.iter().any(|s| selects(s, k, v))),
            Stage::Keep(sels) => labels.retain(|k, v| sels.iter().any(|s| selects(s, k, v))),
        }
    }
    true
}

fn selects(s: &LabelSel, name: &str, value: &str) -> bool {
    s.name == name && s.matcher.as_ref().is_none_or(|m| m.matches(value))
}

/// Evaluates a label filter; a value that does not convert to the filter's type keeps the line
/// and sets `__error__` (as Loki does), a missing label drops it.
pub(crate) fn label_filter(f: &LabelFilter, labels: &mut Labels) -> bool {
    match f {
        LabelFilter::And(a, b) => label_filter(a, labels) && label_filter(b, labels),
        LabelFilter::Or(a, b) => label_filter(a, labels) || label_filter(b, labels),
        LabelFilter::Str(m) => m.matches(labels.get(&m.name).map(String::as_str).unwrap_or("")),
        LabelFilter::Num { name, op, value } => {
            let Some(v) = labels.get(name) else { return false };
            let v = v.trim();
            let (have, want) = match value {
                NumLit::Number(n, _) => (v.parse::<f64>().ok(), *n),
                NumLit::Duration(ns, _) => (parse_go_duration(v), *ns as f64),
                NumLit::Bytes(b, _) => (parse_bytes(v).map(|x| x as f64).or_else(|| v.parse().ok()), *b as f64),
            };
            match have {
                Some(h) => op.holds(h, want),
                None => {
                    let msg = format!("{name}: cannot convert {v:?} for comparison");
                    set_error(labels, "LabelFilterErr", msg);
                    true
                }
            }
        }
    }
}

/// A Go duration, possibly negative, in ns.
fn parse_go_duration(v: &str) -> Option<f64> {
    if v == "0" {
        return Some(0.0);
    }
    match v.strip_prefix('-') {
        Some(rest) => parse_duration(rest).map(|ns| -(ns as f64)),
        None => parse_duration(v.strip_prefix('+').unwrap_or(v)).map(|ns| ns as f64),
    }
}

fn json_text(v: &serde_json::Value) -> Option<String> {
    Some(match v {
        serde_json::Value::Null => return None,
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        other => other.to_string(),
    })
}

/// Converts a structured OTLP body to JSON, so `| json` reads map bodies directly.
fn any_to_json(v: &AnyValue) -> serde_json::Value {
    use serde_json::Value as J;
    match &v.value {
        None => J::Null,
        Some(Value::StringValue(s)) => J::String(s.clone()),
        Some(Value::IntValue(i)) => J::from(*i),
        Some(Value::DoubleValue(f)) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
        Some(Value::BoolValue(b)) => J::Bool(*b),
        Some(Value::BytesValue(b)) => J::String(hex::encode(b)),
        Some(Value::StringValueStrindex(i)) => J::from(*i),
        Some(Value::ArrayValue(a)) => J::Array(a.values.iter().map(any_to_json).collect()),
        Some(Value::KvlistValue(l)) => J::Object(
            l.values.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(any_to_json).unwrap_or(J::Null))).collect(),
        ),
    }
}

/// The JSON document of a line: the structured body when it is a map, else the line parsed.
pub(crate) fn json_doc(line: &str, body: Option<&AnyValue>) -> Result<serde_json::Value, String> {
    if let Some(b @ AnyValue { value: Some(Value::KvlistValue(_)) }) = body {
        return Ok(any_to_json(b));
    }
    serde_json::from_str(line).map_err(|e| e.to_string())
}

/// Flattens a JSON object into `(label, value)` pairs: nested objects joined with `_`, arrays
/// skipped, as Loki's `| json` does.
pub(crate) fn flatten_json(
    prefix: &str,
    obj: &serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<(String, String)>,
) {
    for (k, v) in obj {
        let name = if prefix.is_empty() { sanitize(k) } else { format!("{prefix}_{}", sanitize(k)) };
        match v {
            serde_json::Value::Object(inner) => flatten_json(&name, inner, out),
            serde_json::Value::Array(_) => {}
            v => {
                if let Some(t) = json_text(v).filter(|t| !t.is_empty()) {
                    out.push((name, t));
                }
            }
        }
    }
}

fn json_stage(params: &[super::logql::JsonParam], line: &str, body: Option<&AnyValue>, p: &mut Parsed<'_>) {
    let doc = match json_doc(line, body) {
        Ok(serde_json::Value::Object(o)) => o,
        Ok(_) => {
            set_error(p.labels, "JSONParserErr", "the line is not a JSON object".into());
            return;
        }
        Err(e) => {
            set_error(p.labels, "JSONParserErr", e);
            return;
        }
    };
    if params.is_empty() {
        let mut pairs = Vec::new();
        flatten_json("", &doc, &mut pairs);
        for (k, v) in pairs {
            p.set(k, v);
        }
        return;
    }
    for param in params {
        let mut cur: Option<&serde_json::Value> = None;
        for (i, seg) in param.path.iter().enumerate() {
            cur = match (i, seg, cur) {
                (0, PathSeg::Key(k), _) => doc.get(k),
                (0, PathSeg::Index(_), _) => None,
                (_, PathSeg::Key(k), Some(serde_json::Value::Object(o))) => o.get(k),
                (_, PathSeg::Index(n), Some(serde_json::Value::Array(a))) => a.get(*n),
                _ => None,
            };
            if cur.is_none() {
                break;
            }
        }
        if let Some(t) = cur.and_then(json_text) {
            p.set(param.label.clone(), t);
        }
    }
}

/// Parses logfmt pairs (`None`: a key without `=`), and says what was malformed, if anything
/// (an unterminated quote, a `=` without a key).
pub(crate) fn parse_logfmt(line: &str) -> (Vec<(String, Option<String>)>, Option<String>) {
    let mut out = Vec::new();
    let mut error = None;
    let mut chars = line.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else { break };
        let mut end = start;
        while let Some(&(i, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            end = i + c.len_utf8();
            chars.next();
        }
        let key = &line[start..end];
        if chars.peek().map(|(_, c)| *c) != Some('=') {
            if key.is_empty() {
                chars.next();
                continue;
            }
            out.push((key.to_string(), None));
            continue;
        }
        chars.next(); // '='
        if key.is_empty() {
            error.get_or_insert_with(|| format!("unexpected '=' at position {start}"));
        }
        let value = if chars.peek().map(|(_, c)| *c) == Some('"') {
            chars.next();
            let mut v = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, 'n')) => v.push('\n'),
                        Some((_, 't')) => v.push('\t'),
                        Some((_, 'r')) => v.push('\r'),
                        Some((_, c)) => v.push(c),
                        None => break,
                    },
                    c => v.push(c),
                }
            }
            if !closed {
                error.get_or_insert_with(|| format!("unterminated quoted value for key {key:?}"));
            }
            v
        } else {
            let mut v = String::new();
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                v.push(c);
            }
            v
        };
        if !key.is_empty() {
            out.push((key.to_string(), Some(value)));
        }
    }
    (out, error)
}

fn logfmt_stage(strict: bool, keep_empty: bool, params: &[(String, String)], line: &str, p: &mut Parsed<'_>) {
    let (pairs, error) = parse_logfmt(line);
    if strict && let Some(e) = error {
        set_error(p.labels, "LogfmtParserErr", e);
        return;
    }
    for (key, value) in pairs {
        let value = match value {
            Some(v) if !v.is_empty() => v,
            _ if keep_empty => String::new(),
            _ => continue,
        };
        if params.is_empty() {
            p.set(sanitize(&key), value);
        } else {
            for (label, k) in params {
                if *k == key {
                    p.set(label.clone(), value.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::logql::{Expr, parse};
    use super::*;

    fn stages(q: &str) -> Vec<Stage> {
        match parse(q).unwrap() {
            Expr::Log(l) => l.stages,
            _ => panic!(),
        }
    }

    fn run(q: &str, line: &str, labels: &[(&str, &str)]) -> Option<Labels> {
        let mut l: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        run_pipeline(&stages(q), line, None, &mut l).then_some(l)
    }

    #[test]
    fn sanitizing() {
        assert_eq!(sanitize("service.namespace"), "service_namespace");
        assert_eq!(sanitize("k8s.pod-name"), "k8s_pod_name");
        assert_eq!(sanitize("1st"), "_1st");
        assert_eq!(sanitize("héllo"), "h_llo");
    }

    #[test]
    fn json_flattens_objects_and_renames_clashes() {
        let l = run(
            r#"{a="b"} | json"#,
            r#"{"status": 500, "req": {"method": "GET", "path": "/x"}, "list": [1], "service_name": "x", "n": null}"#,
            &[("service_name", "api")],
        )
        .unwrap();
        assert_eq!(l["status"], "500");
        assert_eq!(l["req_method"], "GET");
        assert_eq!(l["service_name"], "api");
        assert_eq!(l["service_name_extracted"], "x");
        assert!(!l.contains_key("list") && !l.contains_key("n"));
        let bad = run(r#"{a="b"} | json"#, "not json", &[]).unwrap();
        assert_eq!(bad[ERROR_LABEL], "JSONParserErr");
        let dropped = run(r#"{a="b"} | json | drop __error__, __error_details__"#, "not json", &[]).unwrap();
        assert!(dropped.is_empty());
        let l = run(r#"{a="b"} | json m="req.method", first="list[0]""#, r#"{"req":{"method":"PUT"},"list":[7]}"#, &[])
            .unwrap();
        assert_eq!((l["m"].as_str(), l["first"].as_str()), ("PUT", "7"));
    }

    #[test]
    fn logfmt_pairs() {
        let l = run(r#"{a="b"} | logfmt"#, r#"level=warn msg="a \"quoted\" text" dur=1.5s flag"#, &[]).unwrap();
        assert_eq!(l["level"], "warn");
        assert_eq!(l["msg"], "a \"quoted\" text");
        assert_eq!(l["dur"], "1.5s");
        assert!(!l.contains_key("flag"));
        let l = run(r#"{a="b"} | logfmt --keep-empty"#, "flag x=1", &[]).unwrap();
        assert_eq!(l["flag"], "");
        let l = run(r#"{a="b"} | logfmt --strict"#, r#"x="unterminated"#, &[]).unwrap();
        assert_eq!(l[ERROR_LABEL], "LogfmtParserErr");
    }

    #[test]
    fn label_filters() {
        let q = r#"{a="b"} | logfmt | status >= 500 and dur > 1s or size < 1KB"#;
        assert!(run(q, "status=503 dur=2s", &[]).is_some());
        assert!(run(q, "status=503 dur=500ms", &[]).is_none());
        assert!(run(q, "size=10b", &[]).is_some());
        assert!(run(q, "status=200", &[]).is_none());
        // A value that is not a number keeps the line and flags it, as in Loki.
        let l = run(r#"{a="b"} | logfmt | status > 1"#, "status=abc", &[]).unwrap();
        assert_eq!(l[ERROR_LABEL], "LabelFilterErr");
        assert!(run(r#"{a="b"} | logfmt | status > 1 | __error__="""#, "status=abc", &[]).is_none());
        assert!(run(r#"{a="b"} | x="" "#, "", &[]).is_some(), "a missing label is empty");
        assert!(run(r#"{a="b"} | x=~"v.*" "#, "", &[("x", "val")]).is_some());
    }

    #[test]
    fn drop_and_keep() {
        let l = run(r#"{a="b"} | drop x, y="2""#, "", &[("x", "1"), ("y", "1"), ("z", "1")]).unwrap();
        assert_eq!(l.keys().collect::<Vec<_>>(), ["y", "z"]);
        let l = run(r#"{a="b"} | keep x, y="2""#, "", &[("x", "1"), ("y", "1"), ("z", "1")]).unwrap();
        assert_eq!(l.keys().collect::<Vec<_>>(), ["x"]);
    }
}
