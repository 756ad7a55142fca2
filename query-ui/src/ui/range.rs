//! The time range picker every page shares: relative (`range=15m`, `1h`, `6h`, `24h`, `7d`, or any
//! duration) or absolute (`from`/`to`), carried in the URL query.
//!
//! Absolute times are RFC 3339, Unix nanoseconds, or the `YYYY-MM-DDTHH:MM[:SS]` of an HTML
//! `datetime-local` input, read as UTC.

use std::time::{Duration, UNIX_EPOCH};

use obsbox_storage::TimeRange;
use serde::Deserialize;

use crate::filters::{now_ns, parse_duration, parse_time};

/// The relative ranges offered as one-click choices.
pub(crate) const PRESETS: &[&str] = &["15m", "1h", "6h", "24h", "7d"];

/// Longest range accepted (one year), so a typo cannot scan everything.
const MAX_RANGE_NS: u64 = 366 * 24 * 3600 * 1_000_000_000;

/// The range parameters of a page's URL.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RangeParams {
    /// A duration before now.
    #[serde(default)]
    pub range: Option<String>,
    /// Absolute start; selects the absolute mode.
    #[serde(default)]
    pub from: Option<String>,
    /// Absolute end (default now).
    #[serde(default)]
    pub to: Option<String>,
}

/// A parsed range with what the picker needs to show it again.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct UiRange {
    /// The range queried.
    pub time: TimeRange,
    /// The relative duration as written (`1h`), `None` in absolute mode.
    pub relative: Option<String>,
}

fn empty_to_none(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Parses an absolute time bound.
fn parse_abs(name: &str, v: &str) -> Result<u64, String> {
    // datetime-local sends no seconds and no zone
    let v = if v.len() == 16 && v.as_bytes().get(10) == Some(&b'T') { format!("{v}:00") } else { v.to_string() };
    parse_time(name, &v)
}

impl RangeParams {
    /// The range these parameters select; `default` is the relative range when none is given.
    pub(crate) fn parse(&self, default: &str) -> Result<UiRange, String> {
        let now = now_ns();
        if let Some(from) = empty_to_none(&self.from) {
            let start_ns = parse_abs("from", from)?;
            let end_ns = match empty_to_none(&self.to) {
                Some(to) => parse_abs("to", to)?,
                None => now,
            };
            if start_ns >= end_ns {
                return Err("the range's end (to) must be after its start (from)".into());
            }
            if end_ns - start_ns > MAX_RANGE_NS {
                return Err("the range is longer than a year".into());
            }
            return Ok(UiRange { time: TimeRange { start_ns, end_ns }, relative: None });
        }
        if empty_to_none(&self.to).is_some() {
            return Err("to needs a from".into());
        }
        let rel = empty_to_none(&self.range).unwrap_or(default);
        let len = parse_duration("range", rel)?;
        if len == 0 {
            return Err("range must be longer than zero".into());
        }
        if len > MAX_RANGE_NS {
            return Err("the range is longer than a year".into());
        }
        Ok(UiRange { time: TimeRange { start_ns: now.saturating_sub(len), end_ns: now }, relative: Some(rel.into()) })
    }
}

/// `t` (Unix ns) as `YYYY-MM-DDTHH:MM:SS` in UTC, the value format of `datetime-local` inputs.
pub(crate) fn input_value(t_ns: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(t_ns / 1_000_000_000);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.trim_end_matches('Z').to_string()
}

/// `t` (Unix ns) as `YYYY-MM-DD HH:MM:SS.mmm` in UTC, for display.
pub(crate) fn display_time(t_ns: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(t_ns);
    let s = humantime::format_rfc3339_millis(t).to_string();
    s.trim_end_matches('Z').replacen('T', " ", 1)
}

impl UiRange {
    /// The URL query pairs that select this range again.
    pub(crate) fn pairs(&self) -> Vec<(&'static str, String)> {
        match &self.relative {
            Some(r) => vec![("range", r.clone())],
            None => vec![("from", input_value(self.time.start_ns)), ("to", input_value(self.time.end_ns))],
        }
    }

    /// Value of the `from` input (the absolute start, also shown in relative mode).
    pub(crate) fn start_value(&self) -> String {
        input_value(self.time.start_ns)
    }

    /// Value of the `to` input.
    pub(crate) fn end_value(&self) -> String {
        input_value(self.time.end_ns)
    }

    /// Whether the relative preset `r` is selected.
    pub(crate) fn is_preset(&self, r: &str) -> bool {
        self.relative.as_deref() == Some(r)
    }

    /// Length in nanoseconds.
    pub(crate) fn len_ns(&self) -> u64 {
        self.time.end_ns - self.time.start_ns
    }
}

/// Builds a URL `path?k=v&...`, skipping empty values.
pub(crate) fn url<'a>(path: &str, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            ser.append_pair(k, v);
        }
    }
    let q = ser.finish();
    if q.is_empty() { path.to_string() } else { format!("{path}?{q}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(range: Option<&str>, from: Option<&str>, to: Option<&str>) -> RangeParams {
        RangeParams { range: range.map(Into::into), from: from.map(Into::into), to: to.map(Into::into) }
    }

    #[test]
    fn relative_ranges_end_now() {
        let r = params(Some("15m"), None, None).parse("1h").unwrap();
        assert_eq!(r.len_ns(), 15 * 60 * 1_000_000_000);
        assert_eq!(r.relative.as_deref(), Some("15m"));
        assert!(now_ns() - r.time.end_ns < 5_000_000_000);
        let d = params(None, None, None).parse("1h").unwrap();
        assert_eq!(d.len_ns(), 3600 * 1_000_000_000);
        assert_eq!(params(Some("7d"), None, None).parse("1h").unwrap().len_ns(), 7 * 86400 * 1_000_000_000);
        assert_eq!(params(Some(" "), Some(""), None).parse("6h").unwrap().relative.as_deref(), Some("6h"));
    }

    #[test]
    fn absolute_ranges_accept_datetime_local_and_rfc3339() {
        let r = params(Some("1h"), Some("2024-05-01T10:00"), Some("2024-05-01T10:30:15Z")).parse("1h").unwrap();
        assert_eq!(r.relative, None);
        assert_eq!(r.len_ns(), (30 * 60 + 15) * 1_000_000_000);
        assert_eq!(r.start_value(), "2024-05-01T10:00:00");
        // the round trip through the URL gives the same range
        let pairs = r.pairs();
        let again = params(None, Some(&pairs[0].1), Some(&pairs[1].1)).parse("1h").unwrap();
        assert_eq!(again, r);
        let ns = params(None, Some("1714557600000000000"), Some("1714557601000000000")).parse("1h").unwrap();
        assert_eq!(ns.len_ns(), 1_000_000_000);
    }

    #[test]
    fn bad_ranges_are_errors() {
        assert!(params(Some("soon"), None, None).parse("1h").is_err());
        assert!(params(Some("0s"), None, None).parse("1h").is_err());
        assert!(params(Some("400d"), None, None).parse("1h").is_err());
        assert!(params(None, Some("2024-05-01T10:00"), Some("2024-05-01T09:00")).parse("1h").is_err());
        assert!(params(None, Some("yesterday"), None).parse("1h").is_err());
        assert!(params(None, None, Some("2024-05-01T09:00")).parse("1h").is_err());
    }

    #[test]
    fn urls_skip_empty_values_and_encode() {
        assert_eq!(url("/search", [("service", "a b&c"), ("operation", "")]), "/search?service=a+b%26c");
        assert_eq!(url("/logs", []), "/logs");
        assert_eq!(display_time(1_714_557_600_123_000_000), "2024-05-01 10:00:00.123");
    }
}
