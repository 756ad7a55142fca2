//! Parsers of the native API's query parameters: time bounds, durations, the attribute filter
//! expression of trace search, and the log query.
//!
//! Attribute filter expression (trace search `filter=`):
//! ```text
//! expr   := or
//! or     := and ("OR" and)*
//! and    := unary ("AND" unary)*
//! unary  := "NOT" unary | "(" expr ")" | cond
//! cond   := key ("=" | "!=" | "=~" | "!~") value | "exists(" key ")"
//! key    := [resource.]attribute.key      (resource. selects resource attributes)
//! value  := "quoted string" | 123 | 1.5 | true | false | bare-word
//! ```
//! A quoted value is a string; a bare number or boolean matches that typed value or the same
//! text as a string.
//!
//! Log query (`query=`): tantivy's query syntax over the body (words, `word*` prefixes, "phrases",
//! AND/OR/NOT, `-word`), plus top-level field clauses `service:NAME`, `severity:TEXT`, `severity>=N`,
//! `trace_id:HEX`, `span_id:HEX`, `attributes.KEY:VALUE`, `resource.KEY:VALUE`, which are
//! AND-ed with the rest.

use obsbox_storage::{AttrScope, AttrValue, LogPredicate, SpanPredicate, TimeRange};

use crate::limits::QueryLimits;

/// Unix nanoseconds now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A time bound: Unix nanoseconds (digits), or RFC 3339.
pub fn parse_time(name: &str, v: &str) -> Result<u64, String> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().map_err(|_| format!("{name}: {v:?} is out of range"));
    }
    humantime::parse_rfc3339_weak(v)
        .map_err(|_| format!("{name}: {v:?} is neither Unix nanoseconds nor an RFC 3339 time"))
        .and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .map_err(|_| format!("{name}: {v:?} is before 1970"))
        })
}

/// A duration: `250ms`, `1.5s`, `2m`, `1h30m`, or a plain number of nanoseconds.
pub fn parse_duration(name: &str, v: &str) -> Result<u64, String> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().map_err(|_| format!("{name}: {v:?} is out of range"));
    }
    if let Some(num) = v.strip_suffix('s').filter(|n| n.parse::<f64>().is_ok() && !n.ends_with(['m', 'u', 'n', 'µ'])) {
        let secs: f64 = num.parse().map_err(|_| format!("{name}: bad duration {v:?}"))?;
        if (0.0..1e9).contains(&secs) {
            return Ok((secs * 1e9) as u64);
        }
    }
    humantime::parse_duration(v)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .map_err(|_| format!("{name}: {v:?} is not a duration (e.g. 250ms, 1.5s, 2m, 1h)"))
}

/// The time range from `start`/`end` (default: the `lookback` before now, default 1 h).
pub fn time_range(start: Option<&str>, end: Option<&str>, lookback: Option<&str>) -> Result<TimeRange, String> {
    let end_ns = match end {
        Some(e) => parse_time("end", e)?,
        None => now_ns(),
    };
    // A malformed lookback is an error even when `start` makes it unused.
    let lookback_ns = lookback.map(|l| parse_duration("lookback", l)).transpose()?;
    let start_ns = match (start, lookback_ns) {
        (Some(s), _) => parse_time("start", s)?,
        (None, Some(l)) => end_ns.saturating_sub(l),
        (None, None) => end_ns.saturating_sub(3600 * 1_000_000_000),
    };
    if start_ns >= end_ns {
        return Err("end must be after start".into());
    }
    Ok(TimeRange { start_ns, end_ns })
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Op(&'static str),
    LParen,
    RParen,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            out.push(Tok::LParen);
            i += 1;
        } else if c == ')' {
            out.push(Tok::RParen);
            i += 1;
        } else if c == '"' {
            let mut v = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("unterminated string starting at column {}", out_col(&chars, i))),
                    Some('\\') => {
                        match chars.get(i + 1) {
                            Some(n) => v.push(*n),
                            None => return Err("dangling backslash at the end".into()),
                        }
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        v.push(*ch);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Quoted(v));
        } else if let Some(op) =
            ["!=", "=~", "!~", "="].iter().find(|op| chars[i..].starts_with(&op.chars().collect::<Vec<_>>()))
        {
            out.push(Tok::Op(op));
            i += op.len();
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && !"()\"=!".contains(chars[i]) {
                i += 1;
            }
            if i == start {
                return Err(format!("unexpected {:?} at column {}", chars[i], i + 1));
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        }
    }
    Ok(out)
}

fn out_col(_chars: &[char], i: usize) -> usize {
    i
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
    max_depth: usize,
    /// Conditions parsed so far (`key op value` and `exists(key)`).
    conds: usize,
    max_conds: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w == k)
    }

    fn or(&mut self) -> Result<SpanPredicate, String> {
        let mut parts = vec![self.and()?];
        while self.keyword("OR") {
            self.pos += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { SpanPredicate::Or(parts) })
    }

    fn and(&mut self) -> Result<SpanPredicate, String> {
        let mut parts = vec![self.unary()?];
        while self.keyword("AND") {
            self.pos += 1;
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { SpanPredicate::And(parts) })
    }

    fn unary(&mut self) -> Result<SpanPredicate, String> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(format!("nested deeper than {} levels ([query] max_query_depth)", self.max_depth));
        }
        let r = if self.keyword("NOT") {
            self.pos += 1;
            Ok(SpanPredicate::Not(Box::new(self.unary()?)))
        } else if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.or()?;
            match self.next() {
                Some(Tok::RParen) => Ok(e),
                _ => Err("missing closing parenthesis".into()),
            }
        } else {
            self.cond()
        };
        self.depth -= 1;
        r
    }

    fn cond(&mut self) -> Result<SpanPredicate, String> {
        self.conds += 1;
        if self.conds > self.max_conds {
            return Err(format!("more than {} conditions ([query] max_query_clauses)", self.max_conds));
        }
        let key = match self.next() {
            Some(Tok::Word(w)) => w,
            Some(t) => return Err(format!("expected an attribute key, found {}", describe(&t))),
            None => return Err("expected an attribute key, found the end".into()),
        };
        if key == "exists" && self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let k = match self.next() {
                Some(Tok::Word(w)) | Some(Tok::Quoted(w)) => w,
                _ => return Err("exists( needs an attribute key".into()),
            };
            if self.next() != Some(Tok::RParen) {
                return Err("missing ) after exists(key".into());
            }
            let (scope, k) = split_scope(&k);
            return Ok(SpanPredicate::AttributeExists { scope, key: k });
        }
        let op = match self.next() {
            Some(Tok::Op(op)) => op,
            Some(t) => return Err(format!("expected =, !=, =~ or !~ after {key:?}, found {}", describe(&t))),
            None => return Err(format!("expected =, !=, =~ or !~ after {key:?}")),
        };
        let (value, quoted) = match self.next() {
            Some(Tok::Quoted(v)) => (v, true),
            Some(Tok::Word(v)) => (v, false),
            Some(t) => return Err(format!("expected a value after {key:?} {op}, found {}", describe(&t))),
            None => return Err(format!("expected a value after {key:?} {op}")),
        };
        let (scope, key) = split_scope(&key);
        let eq = match op {
            "=" | "!=" => candidates(&value, quoted)
                .into_iter()
                .map(|v| SpanPredicate::Attribute { scope, key: key.clone(), value: v })
                .collect::<Vec<_>>(),
            _ => {
                regex::Regex::new(&value).map_err(|e| format!("bad regular expression {value:?}: {e}"))?;
                vec![SpanPredicate::AttributeRegex { scope, key: key.clone(), regex: value }]
            }
        };
        let p = if eq.len() == 1 { eq.into_iter().next().unwrap_or(SpanPredicate::All) } else { SpanPredicate::Or(eq) };
        Ok(if op.starts_with('!') { SpanPredicate::Not(Box::new(p)) } else { p })
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("{w:?}"),
        Tok::Quoted(q) => format!("\"{q}\""),
        Tok::Op(o) => o.to_string(),
        Tok::LParen => "(".into(),
        Tok::RParen => ")".into(),
    }
}

fn split_scope(key: &str) -> (AttrScope, String) {
    match key.strip_prefix("resource.") {
        Some(k) => (AttrScope::Resource, k.to_string()),
        None => (AttrScope::Item, key.to_string()),
    }
}

/// The typed values a filter value stands for.
pub fn candidates(value: &str, quoted: bool) -> Vec<AttrValue> {
    let mut v = vec![AttrValue::Str(value.to_string())];
    if !quoted {
        if let Ok(i) = value.parse::<i64>() {
            v.push(AttrValue::Int(i));
            v.push(AttrValue::Float(i as f64));
        } else if let Ok(f) = value.parse::<f64>() {
            v.push(AttrValue::Float(f));
        } else if let Ok(b) = value.parse::<bool>() {
            v.push(AttrValue::Bool(b));
        }
    }
    v
}

/// Parses a trace search attribute filter expression under the default limits.
#[cfg(test)]
pub fn parse_filter(s: &str) -> Result<SpanPredicate, String> {
    parse_filter_with(s, &QueryLimits::default())
}

/// Parses a trace search attribute filter expression within `limits` (length, nesting,
/// conditions).
pub fn parse_filter_with(s: &str, limits: &QueryLimits) -> Result<SpanPredicate, String> {
    limits.check_text("filter", s)?;
    let toks = tokenize(s).map_err(|e| format!("filter: {e}"))?;
    if toks.is_empty() {
        return Ok(SpanPredicate::All);
    }
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
        max_depth: limits.max_query_depth,
        conds: 0,
        max_conds: limits.max_query_clauses,
    };
    let e = p.or().map_err(|e| format!("filter: {e}"))?;
    if let Some(t) = p.peek() {
        return Err(format!("filter: unexpected {} (combine conditions with AND / OR)", describe(t)));
    }
    Ok(e)
}

/// Parses a log query under the default limits.
#[cfg(test)]
pub fn parse_log_query(q: &str) -> Result<LogPredicate, String> {
    parse_log_query_with(q, &QueryLimits::default())
}

/// Parses a log query into a predicate within `limits` (length, parenthesis nesting, clauses:
/// each field clause and each top-level word of the full text counts one): field clauses
/// become structured predicates, the rest is full text over the body.
pub fn parse_log_query_with(q: &str, limits: &QueryLimits) -> Result<LogPredicate, String> {
    limits.check_text("query", q)?;
    let mut parts = Vec::new();
    let mut text = Vec::new();
    let words = split_top_level(q, limits.max_query_depth)?;
    if words.len() > limits.max_query_clauses {
        return Err(format!(
            "query: {} clauses, more than the limit of {} ([query] max_query_clauses)",
            words.len(),
            limits.max_query_clauses
        ));
    }
    for word in words {
        match field_clause(&word)? {
            Some(p) => parts.push(p),
            None => text.push(word),
        }
    }
    let text = text.join(" ");
    if !text.trim().is_empty() {
        parts.push(LogPredicate::Text(text));
    }
    Ok(match parts.len() {
        0 => LogPredicate::All,
        1 => parts.remove(0),
        _ => LogPredicate::And(parts),
    })
}

/// Splits on whitespace outside quotes and parentheses.
fn split_top_level(q: &str, max_depth: usize) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut depth, mut quoted) = (0i32, false);
    for c in q.chars() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return Err("query: unbalanced )".into());
        }
        if depth as usize > max_depth {
            return Err(format!("query: nested deeper than {max_depth} levels ([query] max_query_depth)"));
        }
        if c.is_whitespace() && !quoted && depth == 0 {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    if quoted {
        return Err("query: unterminated quote".into());
    }
    if depth != 0 {
        return Err("query: unbalanced (".into());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

fn unquote(v: &str) -> (String, bool) {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => (inner.to_string(), true),
        None => (v.to_string(), false),
    }
}

fn hex_id(name: &str, v: &str, len: usize) -> Result<Vec<u8>, String> {
    match hex::decode(v) {
        Ok(b) if b.len() == len => Ok(b),
        _ => Err(format!("{name}: {v:?} is not {} hex digits", len * 2)),
    }
}

fn field_clause(word: &str) -> Result<Option<LogPredicate>, String> {
    if let Some(v) = word.strip_prefix("severity>=") {
        let n: i32 = v.parse().map_err(|_| format!("severity>=: {v:?} is not a severity number (1-24)"))?;
        return Ok(Some(LogPredicate::MinSeverity(n)));
    }
    let Some((field, value)) = word.split_once(':') else { return Ok(None) };
    let (value, quoted) = unquote(value);
    let typed = |scope: AttrScope, key: &str| {
        let c = candidates(&value, quoted);
        let preds: Vec<LogPredicate> =
            c.into_iter().map(|v| LogPredicate::Attribute { scope, key: key.to_string(), value: v }).collect();
        if preds.len() == 1 { preds.into_iter().next() } else { Some(LogPredicate::Or(preds)) }
    };
    Ok(match field {
        "service" | "service.name" | "service_name" => Some(LogPredicate::Service(value)),
        "severity" | "level" => Some(LogPredicate::SeverityText(value)),
        "trace_id" | "traceId" => Some(LogPredicate::TraceId(hex_id("trace_id", &value, 16)?)),
        "span_id" | "spanId" => Some(LogPredicate::SpanId(hex_id("span_id", &value, 8)?)),
        f => {
            if let Some(k) = f.strip_prefix("attributes.") {
                typed(AttrScope::Item, k)
            } else if let Some(k) = f.strip_prefix("resource.") {
                typed(AttrScope::Resource, k)
            } else if f.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '.') && !f.is_empty() {
                return Err(format!(
                    "query: unknown field {f:?} (fields: service, severity, trace_id, span_id, attributes.KEY, resource.KEY)"
                ));
            } else {
                None
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_expressions() {
        assert_eq!(parse_filter("").unwrap(), SpanPredicate::All);
        assert_eq!(
            parse_filter(r#"http.route = "/a""#).unwrap(),
            SpanPredicate::Attribute {
                scope: AttrScope::Item,
                key: "http.route".into(),
                value: AttrValue::Str("/a".into())
            }
        );
        match parse_filter("code = 200 AND (resource.env = prod OR NOT exists(error))").unwrap() {
            SpanPredicate::And(parts) => {
                assert_eq!(parts.len(), 2);
                assert!(matches!(&parts[0], SpanPredicate::Or(v) if v.len() == 3), "{:?}", parts[0]);
                assert!(matches!(&parts[1], SpanPredicate::Or(v) if v.len() == 2));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_filter("a != b").unwrap(), SpanPredicate::Not(_)));
        assert!(matches!(parse_filter("a =~ \"x.*\"").unwrap(), SpanPredicate::AttributeRegex { .. }));
        assert!(matches!(parse_filter("a !~ x").unwrap(), SpanPredicate::Not(_)));
    }

    #[test]
    fn filter_errors_say_what_is_wrong() {
        assert!(parse_filter("a =").unwrap_err().contains("expected a value"));
        assert!(parse_filter("a b").unwrap_err().contains("expected =, !=, =~ or !~"));
        assert!(parse_filter("(a = 1").unwrap_err().contains("closing parenthesis"));
        assert!(parse_filter("a = 1 b = 2").unwrap_err().contains("AND / OR"));
        assert!(parse_filter("a =~ \"(\"").unwrap_err().contains("bad regular expression"));
        assert!(parse_filter("a = \"x").unwrap_err().contains("unterminated"));
        assert!(parse_filter(&"(".repeat(100)).unwrap_err().contains("nested"));
        assert!(parse_filter(&"NOT ".repeat(10_000)).unwrap_err().contains("max_query_depth"));
    }

    #[test]
    fn limits_bound_length_nesting_and_conditions() {
        let l = QueryLimits { max_query_bytes: 40, max_query_depth: 3, max_query_clauses: 3, ..Default::default() };
        // A bare number stands for three typed values but is one condition.
        parse_filter_with("a = 1 AND (b = x OR NOT exists(c))", &l).unwrap();
        let e = parse_filter_with("a = 1 AND b = 2 AND c = 3 AND d = 4", &l).unwrap_err();
        assert!(e.contains("max_query_clauses"), "{e}");
        let e = parse_filter_with("((((a = 1))))", &l).unwrap_err();
        assert!(e.contains("max_query_depth"), "{e}");
        let e = parse_filter_with(&format!("a = \"{}\"", "x".repeat(40)), &l).unwrap_err();
        assert!(e.contains("max_query_bytes"), "{e}");
        parse_log_query_with("service:a severity>=9 timeout", &l).unwrap();
        let e = parse_log_query_with("service:a one two three", &l).unwrap_err();
        assert!(e.contains("4 clauses") && e.contains("max_query_clauses"), "{e}");
        let e = parse_log_query_with("((((a))))", &l).unwrap_err();
        assert!(e.contains("max_query_depth"), "{e}");
        let e = parse_log_query_with(&"x".repeat(41), &l).unwrap_err();
        assert!(e.contains("max_query_bytes"), "{e}");
    }

    #[test]
    fn filter_parser_never_panics() {
        // A deterministic sweep over short strings from the filter alphabet.
        let alphabet = ["a", " ", "=", "!", "~", "(", ")", "\"", "\\", "AND", "OR", "NOT", "exists", "1", ".", "é"];
        let mut state: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..20_000 {
            let mut s = String::new();
            for _ in 0..(state % 12) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push_str(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            let _ = parse_filter(&s);
            let _ = parse_log_query(&s);
            state = state.wrapping_add(1);
        }
    }

    #[test]
    fn log_queries() {
        assert_eq!(parse_log_query("").unwrap(), LogPredicate::All);
        assert_eq!(parse_log_query("timeout").unwrap(), LogPredicate::Text("timeout".into()));
        match parse_log_query("payment failed service:checkout severity>=17 attributes.user.id:42").unwrap() {
            LogPredicate::And(p) => {
                assert_eq!(p[0], LogPredicate::Service("checkout".into()));
                assert_eq!(p[1], LogPredicate::MinSeverity(17));
                assert!(matches!(&p[2], LogPredicate::Or(v) if v.len() == 3));
                assert_eq!(p[3], LogPredicate::Text("payment failed".into()));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_log_query("trace_id:zz").unwrap_err().contains("32 hex digits"));
        assert!(parse_log_query("colour:red").unwrap_err().contains("unknown field"));
        assert!(parse_log_query("\"unterminated").unwrap_err().contains("unterminated"));
        assert_eq!(parse_log_query("\"a b\" OR c").unwrap(), LogPredicate::Text("\"a b\" OR c".into()));
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(parse_time("start", "1700000000000000000").unwrap(), 1_700_000_000_000_000_000);
        assert_eq!(parse_time("start", "2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000_000_000);
        assert!(parse_time("start", "yesterday").unwrap_err().contains("RFC 3339"));
        assert_eq!(parse_duration("d", "1.5s").unwrap(), 1_500_000_000);
        assert_eq!(parse_duration("d", "250ms").unwrap(), 250_000_000);
        assert_eq!(parse_duration("d", "2m").unwrap(), 120_000_000_000);
        assert!(parse_duration("d", "soon").is_err());
        assert!(time_range(Some("2"), Some("1"), None).unwrap_err().contains("after"));
        assert!(time_range(Some("1"), Some("2"), Some("soon")).unwrap_err().contains("lookback"));
    }
}
