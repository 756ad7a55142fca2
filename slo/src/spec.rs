//! OpenSLO v1 YAML to the [`Slo`] model: [`parse`] reads one file (several documents separated
//! by `---`) into [`Document`]s, checking every field; [`resolve`] joins the documents of a whole
//! directory (`indicatorRef`, `alertPolicyRef`, `conditionRef`, `targetRef` by `metadata.name`)
//! into SLOs. What files may say is documented for users in `docs/slo.md` ("Definitions").
//!
//! Every error is [`SloError::Spec`] with the file, the 1-based line of the offending field (of
//! its document when no better line is known) and the field path (`spec.objectives[0].target`).
//! Unknown fields are errors, as OpenSLO's own schema is strict.
//!
//! # YAML crate
//! `saphyr` (the maintained successor of `yaml-rust`/`yaml-rust2`), through its located tree
//! [`saphyr::MarkedYaml`], walked by `yaml.rs`. Not serde: a serde deserializer
//! (`serde_norway`, `serde_yaml_ng`, `serde-saphyr` with `serde_path_to_error`) reports the
//! location of syntax and type errors but not of the checks that come after (a target out of
//! range, a selection that differs between good and total, a reference to a missing document,
//! a `metricSource.spec` whose shape depends on its `type`); with the located tree every check
//! knows its line and field path. saphyr rejects duplicate keys, bounds alias expansion
//! (no "billion laughs") and nesting depth, and is pure Rust.
//!
//! # Where things are
//! - this file: documents, kinds, metadata, SLO objectives, alert policies and conditions,
//!   notification targets; [`resolve`].
//! - `sli.rs`: SLI specs (`ratioMetric` over `obsbox.spans` or `prometheus`).
//! - `time.rs`: durations and windows.
//! - `yaml.rs`: the strict located reader.

mod sli;
mod time;
mod yaml;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use saphyr::{LoadableYamlNode, MarkedYaml};

use crate::SloError;
use crate::model::{Budgeting, Severity, Sli, Slo, Source, Tier};
use yaml::{Cx, Field, join};

/// The only `apiVersion` read.
pub const API_VERSION: &str = "openslo/v1";
/// Annotation on an SLO that sets its low-traffic guard ([`Slo::min_events`]).
pub const MIN_EVENTS_ANNOTATION: &str = "obsbox.io/min-events";
/// [`Slo::min_events`] when the annotation is absent.
pub const DEFAULT_MIN_EVENTS: u64 = 100;
/// Larger files are refused unread.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// Labels obsbox sets itself on alerts and rules; `metadata.labels` may not use them.
const RESERVED_LABELS: [&str; 5] = ["alertname", "slo", "service", "severity", "tier"];

/// One checked OpenSLO document; references to other documents are not yet resolved.
#[derive(Clone, Debug)]
pub struct Document {
    name: String,
    file: PathBuf,
    line: usize,
    name_line: usize,
    body: Body,
}

#[derive(Clone, Debug)]
enum Body {
    Slo(Box<SloDoc>),
    Sli(Sli),
    Policy(PolicyDoc),
    Condition(ConditionDoc),
    Target(String),
    Service,
}

/// Where a field is, for errors found while resolving.
#[derive(Clone, Debug)]
struct Loc {
    file: PathBuf,
    line: usize,
    field: String,
}

impl Loc {
    fn of(cx: Cx<'_>, f: &Field<'_, '_>) -> Loc {
        Loc { file: cx.file.to_path_buf(), line: f.line, field: f.path.clone() }
    }

    fn err(&self, message: impl Into<String>) -> SloError {
        SloError::Spec { file: self.file.clone(), line: self.line, field: self.field.clone(), message: message.into() }
    }
}

/// A document given inline or by name.
#[derive(Clone, Debug)]
enum Ref<T> {
    Named(String, Loc),
    Inline(T),
}

#[derive(Clone, Debug)]
struct SloDoc {
    display_name: String,
    description: String,
    service: String,
    indicator: Ref<Sli>,
    target: f64,
    objective_name: String,
    window: crate::model::Window,
    budgeting: Budgeting,
    policies: Vec<Ref<PolicyDoc>>,
    min_events: u64,
    labels: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
struct PolicyDoc {
    conditions: Vec<Ref<ConditionDoc>>,
    targets: Vec<Ref<String>>,
}

#[derive(Clone, Debug)]
struct ConditionDoc {
    name: String,
    severity: Severity,
    burn_rate: f64,
    long: Duration,
    short: Duration,
    alert_after: Duration,
    threshold_at: Loc,
    lookback_at: Loc,
}

impl Document {
    /// The OpenSLO kind (`SLO`, `SLI`, `AlertPolicy`, ...).
    pub fn kind(&self) -> &'static str {
        match self.body {
            Body::Slo(_) => "SLO",
            Body::Sli(_) => "SLI",
            Body::Policy(_) => "AlertPolicy",
            Body::Condition(_) => "AlertCondition",
            Body::Target(_) => "AlertNotificationTarget",
            Body::Service => "Service",
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file it is in.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// 1-based line where the document starts.
    pub fn line(&self) -> usize {
        self.line
    }
}

/// Reads the documents of one file. `file` is only used in errors and [`Slo::source`]. Empty
/// documents (only comments) are skipped. The first problem found is the error.
pub fn parse(file: &Path, text: &str) -> Result<Vec<Document>, SloError> {
    let cx = Cx { file };
    if text.len() > MAX_FILE_BYTES {
        return Err(cx.err(1, "document", format!("file larger than {} KiB", MAX_FILE_BYTES / 1024)));
    }
    check_nesting(cx, text)?;
    // The YAML loader recurses once per nesting level (and drops its tree recursively): bounded
    // by `check_nesting`, saphyr's flow-level and alias limits, it still needs more stack than a
    // test or tokio thread has, so it gets its own thread.
    std::thread::scope(|s| {
        let parser = std::thread::Builder::new()
            .name("slo-yaml".into())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(s, || parse_here(cx, text))
            .map_err(|e| cx.err(1, "document", format!("cannot start the YAML parser: {e}")))?;
        parser.join().unwrap_or_else(|_| Err(cx.err(1, "document", "the YAML parser failed")))
    })
}

const PARSER_STACK_BYTES: usize = 64 << 20;
const MAX_INDENT: usize = 256;
const MAX_INDICATORS_PER_LINE: usize = 128;

/// Refuses text that could nest deeper than the parser's stack allows: nesting needs either
/// indentation or an indicator (`-`, `?`, `[`, `{`) per level on a line.
fn check_nesting(cx: Cx<'_>, text: &str) -> Result<(), SloError> {
    for (i, line) in text.split('\n').enumerate() {
        for line in line.split('\r') {
            let indent = line.len() - line.trim_start_matches(' ').len();
            let indicators = line.bytes().filter(|b| matches!(b, b'-' | b'?' | b'[' | b'{')).count();
            if indent > MAX_INDENT || indicators > MAX_INDICATORS_PER_LINE {
                return Err(cx.err(i + 1, "document", "nested too deeply"));
            }
        }
    }
    Ok(())
}

fn parse_here(cx: Cx<'_>, text: &str) -> Result<Vec<Document>, SloError> {
    let docs = MarkedYaml::load_from_str(text)
        .map_err(|e| cx.err(e.marker().line().max(1), "document", format!("invalid YAML: {}", e.info())))?;
    let mut out = Vec::with_capacity(docs.len());
    for doc in &docs {
        let root = Field::root(doc);
        if root.is_null() {
            continue;
        }
        out.push(document(cx, &root)?);
    }
    Ok(out)
}

/// [`parse`] then [`resolve`] on one self-contained file: its SLOs, or the first error.
pub fn parse_slos(file: &Path, text: &str) -> Result<Vec<Slo>, SloError> {
    let docs = parse(file, text)?;
    let mut r = resolve(&docs);
    match r.errors.is_empty() {
        true => Ok(r.slos),
        false => Err(r.errors.swap_remove(0).1),
    }
}

fn document(cx: Cx<'_>, root: &Field<'_, '_>) -> Result<Document, SloError> {
    let m = root.map(cx, &["apiVersion", "kind", "metadata", "spec"])?;
    let api = m.req(cx, "apiVersion")?;
    let version = api.str(cx)?;
    if version != API_VERSION {
        return Err(api.err(cx, format!("unsupported apiVersion {version:?}: obsbox reads {API_VERSION}")));
    }
    let kind_field = m.req(cx, "kind")?;
    let kind = kind_field.str(cx)?;
    if !["SLO", "SLI", "AlertPolicy", "AlertCondition", "AlertNotificationTarget", "Service"].contains(&kind) {
        return Err(kind_field.err(
            cx,
            format!(
                "unsupported kind {kind:?}: obsbox reads SLO, SLI, AlertPolicy, AlertCondition, \
                 AlertNotificationTarget and Service"
            ),
        ));
    }
    let meta = metadata(cx, m.req(cx, "metadata")?)?;
    let spec = m.req(cx, "spec")?;
    let body = match kind {
        "SLO" => Body::Slo(Box::new(slo_spec(cx, spec, &meta)?)),
        "SLI" => Body::Sli(sli::sli_spec(cx, spec)?),
        "AlertPolicy" => Body::Policy(policy_spec(cx, spec)?),
        "AlertCondition" => Body::Condition(condition_spec(cx, spec, &meta.name)?),
        "AlertNotificationTarget" => Body::Target(target_spec(cx, spec)?),
        _ => {
            let s = spec.map(cx, &["description"])?;
            if let Some(d) = s.get("description") {
                d.str(cx)?;
            }
            Body::Service
        }
    };
    Ok(Document { name: meta.name, file: cx.file.to_path_buf(), line: root.line, name_line: meta.name_line, body })
}

struct Metadata {
    name: String,
    name_line: usize,
    display_name: Option<String>,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String, Loc)>,
}

fn metadata(cx: Cx<'_>, f: &Field<'_, '_>) -> Result<Metadata, SloError> {
    let m = f.map(cx, &["name", "displayName", "labels", "annotations"])?;
    let name_field = m.req(cx, "name")?;
    let name = name_field.str(cx)?.to_owned();
    if !valid_name(&name) {
        return Err(name_field.err(
            cx,
            format!("invalid name {name:?}: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"),
        ));
    }
    let display_name = m.get("displayName").map(|d| d.str(cx).map(str::to_owned)).transpose()?;
    let mut labels = Vec::new();
    if let Some(l) = m.get("labels") {
        for (key, v) in l.open_map(cx)?.entries() {
            if !valid_label_name(key) {
                return Err(v.err(
                    cx,
                    format!("invalid label name {key:?}: letters, digits and '_', not starting with a digit or \"__\""),
                ));
            }
            if RESERVED_LABELS.contains(&key) {
                return Err(
                    v.err(cx, format!("label {key:?} is set by obsbox on alerts and rules; choose another name"))
                );
            }
            let value = if v.seq(cx).is_ok() {
                let items = v.seq(cx)?;
                items.iter().map(|i| i.scalar_text(cx)).collect::<Result<Vec<_>, _>>()?.join(",")
            } else {
                v.scalar_text(cx)?
            };
            labels.push((key.to_owned(), value));
        }
        labels.sort();
    }
    let mut annotations = Vec::new();
    if let Some(a) = m.get("annotations") {
        for (key, v) in a.open_map(cx)?.entries() {
            annotations.push((key.to_owned(), v.scalar_text(cx)?, Loc::of(cx, v)));
        }
    }
    Ok(Metadata { name, name_line: name_field.line, display_name, labels, annotations })
}

/// OpenSLO names are DNS labels (RFC 1123).
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

fn slo_spec(cx: Cx<'_>, spec: &Field<'_, '_>, meta: &Metadata) -> Result<SloDoc, SloError> {
    let m = spec.map(
        cx,
        &[
            "description",
            "service",
            "indicator",
            "indicatorRef",
            "timeWindow",
            "budgetingMethod",
            "objectives",
            "alertPolicies",
        ],
    )?;
    let description = m.get("description").map(|d| d.str(cx).map(str::to_owned)).transpose()?.unwrap_or_default();
    let service_field = m.req(cx, "service")?;
    let service = service_field.str(cx)?.to_owned();
    if service.is_empty() {
        return Err(service_field.err(cx, "must not be empty"));
    }
    let indicator = match (m.get("indicator"), m.get("indicatorRef")) {
        (Some(_), Some(r)) => return Err(r.err(cx, "give indicator or indicatorRef, not both")),
        (Some(i), None) => {
            let im = i.map(cx, &["metadata", "spec"])?;
            if let Some(meta) = im.get("metadata") {
                metadata(cx, meta)?;
            }
            Ref::Inline(sli::sli_spec(cx, im.req(cx, "spec")?)?)
        }
        (None, Some(r)) => Ref::Named(r.str(cx)?.to_owned(), Loc::of(cx, r)),
        (None, None) => return Err(m.err(cx, "missing field `indicatorRef` (or an inline `indicator`)")),
    };
    let window_field = m.req(cx, "timeWindow")?;
    let window = time::window(cx, window_field)?;
    let objectives = m.req(cx, "objectives")?;
    let items = objectives.seq(cx)?;
    let [objective] = items.as_slice() else {
        return Err(objectives.err(
            cx,
            format!(
                "found {} objectives: obsbox evaluates exactly one objective per SLO; split them into several SLOs",
                items.len()
            ),
        ));
    };
    let o = objective.map(
        cx,
        &[
            "displayName",
            "op",
            "value",
            "target",
            "targetPercent",
            "timeSliceTarget",
            "timeSliceWindow",
            "indicator",
            "indicatorRef",
            "compositeWeight",
        ],
    )?;
    for key in ["op", "value"] {
        if let Some(f) = o.get(key) {
            return Err(f.err(cx, "op and value belong to threshold objectives, which obsbox does not support: it evaluates ratioMetric SLIs against a target"));
        }
    }
    for key in ["indicator", "indicatorRef", "compositeWeight"] {
        if let Some(f) = o.get(key) {
            return Err(f.err(cx, "composite SLOs (an indicator per objective) are not supported: give spec.indicatorRef and one objective per SLO"));
        }
    }
    let objective_name = o.get("displayName").map(|d| d.str(cx).map(str::to_owned)).transpose()?.unwrap_or_default();
    let target = match (o.get("target"), o.get("targetPercent")) {
        (Some(_), Some(p)) => return Err(p.err(cx, "give target or targetPercent, not both")),
        (Some(t), None) => {
            let v = t.f64(cx)?;
            if !(v > 0.0 && v < 1.0) {
                return Err(t.err(cx, format!("must be between 0 and 1 (exclusive), got {v}; e.g. 0.999")));
            }
            v
        }
        (None, Some(p)) => {
            let v = p.f64(cx)?;
            if !(v > 0.0 && v < 100.0) {
                return Err(p.err(cx, format!("must be between 0 and 100 (exclusive), got {v}; e.g. 99.9")));
            }
            v / 100.0
        }
        (None, None) => return Err(o.err(cx, "missing field `target` (or `targetPercent`)")),
    };
    let method_field = m.req(cx, "budgetingMethod")?;
    let slice_window = o.get("timeSliceWindow").map(|f| time::whole_minutes(cx, f).map(|d| (d, f))).transpose()?;
    let slice_target = o.get("timeSliceTarget").map(|f| f.f64(cx).map(|v| (v, f))).transpose()?;
    let budgeting = match method_field.str(cx)? {
        "Occurrences" => {
            if let Some((_, f)) = slice_window {
                return Err(f.err(cx, "time slices apply to Timeslices and RatioTimeslices budgeting only"));
            }
            if let Some((_, f)) = slice_target {
                return Err(f.err(cx, "timeSliceTarget applies to Timeslices budgeting only"));
            }
            Budgeting::Occurrences
        }
        "Timeslices" => {
            let Some((slice, _)) = slice_window else {
                return Err(o.err(cx, "Timeslices budgeting needs timeSliceWindow (e.g. 5m)"));
            };
            let Some((t, f)) = slice_target else {
                return Err(o.err(cx, "Timeslices budgeting needs timeSliceTarget (e.g. 0.95)"));
            };
            if !(t > 0.0 && t <= 1.0) {
                return Err(f.err(cx, format!("must be above 0 and at most 1, got {t}")));
            }
            Budgeting::Timeslices { slice, slice_target: t }
        }
        "RatioTimeslices" => {
            let Some((slice, _)) = slice_window else {
                return Err(o.err(cx, "RatioTimeslices budgeting needs timeSliceWindow (e.g. 5m)"));
            };
            if let Some((_, f)) = slice_target {
                return Err(f.err(cx, "timeSliceTarget applies to Timeslices budgeting only"));
            }
            Budgeting::RatioTimeslices { slice }
        }
        other => {
            return Err(method_field
                .err(cx, format!("unknown budgeting method {other:?} (Occurrences, Timeslices or RatioTimeslices)")));
        }
    };
    if let (Some((slice, f)), nominal) = (slice_window, window.nominal())
        && slice >= nominal
    {
        return Err(f.err(cx, "the time slice must be shorter than the window"));
    }
    let mut policies = Vec::new();
    if let Some(p) = m.get("alertPolicies") {
        for item in p.seq(cx)? {
            policies.push(reference(cx, &item, "alertPolicyRef", "AlertPolicy", |spec, _| policy_spec(cx, spec))?);
        }
    }
    let mut min_events = DEFAULT_MIN_EVENTS;
    for (key, value, loc) in &meta.annotations {
        if key == MIN_EVENTS_ANNOTATION {
            min_events = value
                .trim()
                .parse()
                .map_err(|_| loc.err(format!("must be a whole number of events, got {value:?}")))?;
        }
    }
    Ok(SloDoc {
        display_name: meta.display_name.clone().unwrap_or_else(|| meta.name.clone()),
        description,
        service,
        indicator,
        target,
        objective_name,
        window,
        budgeting,
        policies,
        min_events,
        labels: meta.labels.clone(),
    })
}

/// An item that is either `{<ref_key>: name}` or an inline `{kind, metadata, spec}` document.
fn reference<T>(
    cx: Cx<'_>,
    item: &Field<'_, '_>,
    ref_key: &str,
    kind: &str,
    inline: impl FnOnce(&Field<'_, '_>, &str) -> Result<T, SloError>,
) -> Result<Ref<T>, SloError> {
    let m = item.map(cx, &[ref_key, "apiVersion", "kind", "metadata", "spec"])?;
    if let Some(r) = m.get(ref_key) {
        if let Some(other) = m.present(&["apiVersion", "kind", "metadata", "spec"]).first() {
            return Err(cx.err(r.line, &join(&m.path, other), format!("give {ref_key} or an inline {kind}, not both")));
        }
        return Ok(Ref::Named(r.str(cx)?.to_owned(), Loc::of(cx, r)));
    }
    if let Some(a) = m.get("apiVersion") {
        let v = a.str(cx)?;
        if v != API_VERSION {
            return Err(a.err(cx, format!("unsupported apiVersion {v:?}: obsbox reads {API_VERSION}")));
        }
    }
    let k = m
        .req(cx, "kind")
        .map_err(|_| m.err(cx, format!("give {ref_key}, or an inline {kind} with kind, metadata and spec")))?;
    if k.str(cx)? != kind {
        return Err(k.err(cx, format!("expected kind {kind}")));
    }
    let meta = metadata(cx, m.req(cx, "metadata")?)?;
    Ok(Ref::Inline(inline(m.req(cx, "spec")?, &meta.name)?))
}

fn policy_spec(cx: Cx<'_>, spec: &Field<'_, '_>) -> Result<PolicyDoc, SloError> {
    let m = spec.map(
        cx,
        &[
            "description",
            "alertWhenNoData",
            "alertWhenResolved",
            "alertWhenBreaching",
            "conditions",
            "notificationTargets",
        ],
    )?;
    if let Some(d) = m.get("description") {
        d.str(cx)?;
    }
    // obsbox alerts while the burn rate is too high, notifies on resolution and never alerts on
    // missing data: the flags may only confirm that.
    for (key, supported) in [("alertWhenNoData", false), ("alertWhenResolved", true), ("alertWhenBreaching", true)] {
        if let Some(f) = m.get(key)
            && f.bool(cx)? != supported
        {
            return Err(f.err(
                cx,
                format!("obsbox alerts when breaching, notifies when resolved and never alerts on missing data: {key} can only be {supported}"),
            ));
        }
    }
    let cond_field = m.req(cx, "conditions")?;
    let mut conditions = Vec::new();
    for item in cond_field.seq(cx)? {
        conditions
            .push(reference(cx, &item, "conditionRef", "AlertCondition", |spec, name| condition_spec(cx, spec, name))?);
    }
    if conditions.is_empty() {
        return Err(cond_field.err(cx, "an alert policy needs at least one condition"));
    }
    let mut targets = Vec::new();
    if let Some(t) = m.get("notificationTargets") {
        for item in t.seq(cx)? {
            targets
                .push(reference(cx, &item, "targetRef", "AlertNotificationTarget", |spec, _| target_spec(cx, spec))?);
        }
    }
    Ok(PolicyDoc { conditions, targets })
}

fn condition_spec(cx: Cx<'_>, spec: &Field<'_, '_>, name: &str) -> Result<ConditionDoc, SloError> {
    let m = spec.map(cx, &["description", "severity", "condition"])?;
    if let Some(d) = m.get("description") {
        d.str(cx)?;
    }
    let sev = m.req(cx, "severity")?;
    let severity = match sev.str(cx)?.to_ascii_lowercase().as_str() {
        "page" => Severity::Page,
        "ticket" => Severity::Ticket,
        other => return Err(sev.err(cx, format!("unknown severity {other:?} (page or ticket)"))),
    };
    let c =
        m.req(cx, "condition")?.map(cx, &["kind", "op", "threshold", "lookbackWindow", "alertAfter", "shortWindow"])?;
    let kind = c.req(cx, "kind")?;
    if !kind.str(cx)?.eq_ignore_ascii_case("burnrate") {
        return Err(kind.err(cx, "obsbox evaluates burnrate conditions only"));
    }
    let op = c.req(cx, "op")?;
    if op.str(cx)? != "gte" {
        return Err(op.err(cx, "burn-rate conditions use op: gte"));
    }
    let threshold = c.req(cx, "threshold")?;
    let burn_rate = threshold.f64(cx)?;
    if !(burn_rate > 0.0 && burn_rate.is_finite()) {
        return Err(threshold.err(cx, format!("must be a positive burn rate, got {burn_rate}")));
    }
    let lookback = c.req(cx, "lookbackWindow")?;
    let long = time::duration(cx, lookback)?;
    let short = match c.get("shortWindow") {
        Some(s) => {
            let d = time::duration(cx, s)?;
            if d >= long {
                return Err(s.err(cx, "the short window must be shorter than lookbackWindow"));
            }
            d
        }
        None => long / 12,
    };
    let alert_after = c.get("alertAfter").map(|a| time::duration_or_zero(cx, a)).transpose()?.unwrap_or_default();
    Ok(ConditionDoc {
        name: name.to_owned(),
        severity,
        burn_rate,
        long,
        short,
        alert_after,
        threshold_at: Loc::of(cx, threshold),
        lookback_at: Loc::of(cx, lookback),
    })
}

fn target_spec(cx: Cx<'_>, spec: &Field<'_, '_>) -> Result<String, SloError> {
    let m = spec.map(cx, &["description", "target"])?;
    if let Some(d) = m.get("description") {
        d.str(cx)?;
    }
    let t = m.req(cx, "target")?;
    let text = t.str(cx)?.trim();
    // The notifier's own check, so that a definition loads only with a URL it can post to; kept
    // normalized, so one URL written two ways is one receiver.
    match crate::notify::webhook_url(text) {
        Ok(url) => Ok(url.to_string()),
        Err(reason) => {
            Err(t.err(cx, format!("target must be a webhook URL (http://host/path), got {text:?}: {reason}")))
        }
    }
}

/// What [`resolve`] makes of a set of documents.
#[derive(Debug, Default)]
pub struct Resolved {
    /// The SLOs that resolved, in document order.
    pub slos: Vec<Slo>,
    /// The documents rejected: the file the rejected document is in (for an SLO whose reference
    /// fails, the SLO's file, though the error may point into another file) and why.
    pub errors: Vec<(PathBuf, SloError)>,
}

/// Joins documents (of every file of a directory, in path order) into SLOs: references resolve
/// by `metadata.name` within each kind; of two documents of one kind with the same name the
/// later is rejected.
pub fn resolve(docs: &[Document]) -> Resolved {
    let mut out = Resolved::default();
    let mut by_kind: HashMap<(&str, &str), &Document> = HashMap::new();
    let mut unique = Vec::with_capacity(docs.len());
    for d in docs {
        match by_kind.get(&(d.kind(), d.name.as_str())) {
            Some(first) => {
                let e = SloError::Spec {
                    file: d.file.clone(),
                    line: d.name_line,
                    field: "metadata.name".into(),
                    message: format!(
                        "another {} is named {:?} ({}:{}); names must be unique per kind",
                        d.kind(),
                        d.name,
                        first.file.display(),
                        first.line
                    ),
                };
                out.errors.push((d.file.clone(), e));
            }
            None => {
                by_kind.insert((d.kind(), d.name.as_str()), d);
                unique.push(d);
            }
        }
    }
    let lookup = |kind: &str, name: &str, loc: &Loc| {
        by_kind.get(&(kind, name)).map(|d| &d.body).ok_or_else(|| {
            loc.err(format!("no {kind} named {name:?} in the directory (references match metadata.name)"))
        })
    };
    for d in unique {
        let Body::Slo(s) = &d.body else { continue };
        match build(d, s, &lookup) {
            Ok(slo) => out.slos.push(slo),
            Err(e) => out.errors.push((d.file.clone(), e)),
        }
    }
    out
}

fn build<'a>(
    d: &Document,
    s: &SloDoc,
    lookup: &impl Fn(&str, &str, &Loc) -> Result<&'a Body, SloError>,
) -> Result<Slo, SloError> {
    let sli = match &s.indicator {
        Ref::Inline(sli) => sli.clone(),
        Ref::Named(name, loc) => match lookup("SLI", name, loc)? {
            Body::Sli(sli) => sli.clone(),
            _ => unreachable!("looked up by kind"),
        },
    };
    let tiers = if s.policies.is_empty() {
        Tier::workbook(s.window.nominal())
    } else {
        let mut tiers: Vec<Tier> = Vec::new();
        for p in &s.policies {
            let policy = match p {
                Ref::Inline(p) => p,
                Ref::Named(name, loc) => match lookup("AlertPolicy", name, loc)? {
                    Body::Policy(p) => p,
                    _ => unreachable!("looked up by kind"),
                },
            };
            let mut webhooks = Vec::new();
            for t in &policy.targets {
                webhooks.push(match t {
                    Ref::Inline(url) => url.clone(),
                    Ref::Named(name, loc) => match lookup("AlertNotificationTarget", name, loc)? {
                        Body::Target(url) => url.clone(),
                        _ => unreachable!("looked up by kind"),
                    },
                });
            }
            for c in &policy.conditions {
                let (c, at) = match c {
                    Ref::Inline(c) => (c, &c.threshold_at),
                    Ref::Named(name, loc) => match lookup("AlertCondition", name, loc)? {
                        Body::Condition(c) => (c, loc),
                        _ => unreachable!("looked up by kind"),
                    },
                };
                if tiers.iter().any(|t| t.name == c.name) {
                    return Err(at.err(format!("condition {:?} is used twice by this SLO", c.name)));
                }
                let max = 1.0 / (1.0 - s.target);
                if c.burn_rate > max * (1.0 + 1e-9) {
                    return Err(c.threshold_at.err(format!(
                        "burn rate {} can never be reached by SLO {:?}: at target {} the highest burn rate (every event bad) is {}",
                        c.burn_rate,
                        d.name,
                        s.target,
                        (max * 1000.0).round() / 1000.0
                    )));
                }
                if c.long > s.window.nominal() {
                    return Err(c.lookback_at.err(format!("longer than the window of SLO {:?}", d.name)));
                }
                tiers.push(Tier {
                    name: c.name.clone(),
                    severity: c.severity,
                    burn_rate: c.burn_rate,
                    long: c.long,
                    short: c.short,
                    alert_after: c.alert_after,
                    webhooks: webhooks.clone(),
                });
            }
        }
        tiers.sort_by(|a, b| b.burn_rate.total_cmp(&a.burn_rate));
        tiers
    };
    Ok(Slo {
        name: d.name.clone(),
        display_name: s.display_name.clone(),
        description: s.description.clone(),
        service: s.service.clone(),
        sli,
        target: s.target,
        objective_name: s.objective_name.clone(),
        window: s.window.clone(),
        budgeting: s.budgeting.clone(),
        tiers,
        min_events: s.min_events,
        labels: s.labels.clone(),
        source: Source { file: d.file.clone(), line: d.line },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels_and_labels_prometheus_names() {
        for ok in ["a", "payments-availability", "a1", &"x".repeat(63)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
        for ok in ["team", "_x", "a1_B"] {
            assert!(valid_label_name(ok), "{ok}");
        }
        for bad in ["", "1a", "a-b", "__x", "a.b"] {
            assert!(!valid_label_name(bad), "{bad}");
        }
    }

    #[test]
    fn crlf_files_read_like_lf_files() {
        let text =
            "apiVersion: openslo/v1\r\nkind: SLO\r\nmetadata: {name: x}\r\nspec:\r\n  service: s\r\n  oops: 1\r\n";
        let e = parse(Path::new("c.yaml"), text).unwrap_err().to_string();
        assert!(e.starts_with("c.yaml:6: spec.oops: unknown field"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused_with_its_line() {
        let text = format!("a: 1\n{}\n", "- ".repeat(200));
        let e = parse(Path::new("d.yaml"), &text).unwrap_err().to_string();
        assert_eq!(e, "d.yaml:2: document: nested too deeply");
        let text = format!("a:\n{}b: 1\n", " ".repeat(300));
        assert!(parse(Path::new("d.yaml"), &text).unwrap_err().to_string().contains("nested too deeply"));
        // Within the limits, the parser (on its own stack) copes.
        assert!(parse(Path::new("d.yaml"), &"- ".repeat(128)).is_err());
    }

    #[test]
    fn empty_documents_are_skipped() {
        assert!(parse(Path::new("e.yaml"), "").unwrap().is_empty());
        assert!(parse(Path::new("e.yaml"), "# only a comment\n---\n---\n").unwrap().is_empty());
    }
}
