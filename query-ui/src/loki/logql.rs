//! LogQL: the lexer, recursive-descent parser and syntax tree of the subset obsbox runs
//! (`docs/logql.md` lists it).
//!
//! The parser recognises more of LogQL than obsbox evaluates, so that a query using a known but
//! unsupported construct (`line_format`, `unwrap`, `offset`, ...) gets an error naming that
//! construct instead of a generic syntax error. Every syntax tree prints back as LogQL
//! ([`std::fmt::Display`]) that parses to the same tree (used by `format_query` and tested).

use std::fmt;

use regex::Regex;

/// Longest query text the parser accepts, in bytes (a backstop: the APIs apply `[query]
/// max_query_bytes` first).
pub(crate) const MAX_QUERY_LEN: usize = 1 << 20;
/// Deepest nesting of parentheses and sub-expressions the parser accepts (a bound on its
/// recursion; `[query] max_query_depth` applies to the parsed tree too, see [`shape`]).
const MAX_DEPTH: usize = 64;
/// Compiled size limit of one regular expression (the `regex` crate runs in linear time; this
/// bounds its memory).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Why a query was refused.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum LogqlError {
    /// Not LogQL (or not valid LogQL): where and why.
    Parse {
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        col: usize,
        /// What is wrong.
        msg: String,
    },
    /// Valid LogQL that obsbox does not run; names the construct.
    Unsupported(String),
}

impl fmt::Display for LogqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogqlError::Parse { line, col, msg } => write!(f, "parse error at line {line}, col {col}: {msg}"),
            LogqlError::Unsupported(what) => {
                write!(f, "unsupported LogQL: {what} (supported: see docs/logql.md)")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Syntax tree
// ---------------------------------------------------------------------------------------------

/// A parsed query.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Expr {
    /// A log query: returns log lines.
    Log(LogExpr),
    /// A metric query: returns samples.
    Metric(MetricExpr),
}

/// A stream selector and its pipeline.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LogExpr {
    /// The stream selector's matchers (at least one).
    pub matchers: Vec<Matcher>,
    /// Pipeline stages, in order.
    pub stages: Vec<Stage>,
}

/// How a label matcher compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MatchOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `=~` (fully anchored)
    Re,
    /// `!~` (fully anchored)
    NotRe,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            MatchOp::Eq => "=",
            MatchOp::Ne => "!=",
            MatchOp::Re => "=~",
            MatchOp::NotRe => "!~",
        }
    }
}

/// A compiled regular expression that compares by its source text.
#[derive(Clone, Debug)]
pub(crate) struct Re {
    /// The expression as written.
    pub src: String,
    /// Compiled form (anchored or not, as the construct requires).
    pub re: Regex,
}

impl PartialEq for Re {
    fn eq(&self, other: &Re) -> bool {
        self.src == other.src && self.re.as_str() == other.re.as_str()
    }
}

/// `name op "value"`. A missing label has the value `""`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Matcher {
    /// Label name.
    pub name: String,
    /// Comparison.
    pub op: MatchOp,
    /// Value or regular expression source.
    pub value: String,
    /// The anchored expression, for `=~` and `!~`.
    pub re: Option<Re>,
}

impl Matcher {
    /// Whether a label value (`""` when missing) satisfies the matcher.
    pub fn matches(&self, v: &str) -> bool {
        match (self.op, &self.re) {
            (MatchOp::Eq, _) => v == self.value,
            (MatchOp::Ne, _) => v != self.value,
            (MatchOp::Re, Some(r)) => r.re.is_match(v),
            (MatchOp::NotRe, Some(r)) => !r.re.is_match(v),
            (_, None) => false,
        }
    }
}

/// One pipeline stage.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Stage {
    /// `|= "a"`, `!= "a"`, `|~ "re"`, `!~ "re"`, with `or` alternatives.
    Line(LineFilter),
    /// `| json` (all top-level fields, nested objects flattened with `_`) or `| json a="path"`.
    Json(Vec<JsonParam>),
    /// `| logfmt` with optional flags and parameters.
    Logfmt {
        /// `--strict`: a malformed pair is an error.
        strict: bool,
        /// `--keep-empty`: standalone keys become labels with an empty value.
        keep_empty: bool,
        /// `label="key"` (or `key`) extractions; empty: every pair.
        params: Vec<(String, String)>,
    },
    /// `| <label filter expression>`.
    Label(LabelFilter),
    /// `| drop a, b="v"`.
    Drop(Vec<LabelSel>),
    /// `| keep a, b="v"`.
    Keep(Vec<LabelSel>),
}

/// How a line filter compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LineOp {
    /// `|=`: contains (case-sensitive substring).
    Contains,
    /// `!=`: does not contain.
    NotContains,
    /// `|~`: a match of the regular expression anywhere in the line.
    Match,
    /// `!~`: no match.
    NotMatch,
}

impl LineOp {
    fn as_str(self) -> &'static str {
        match self {
            LineOp::Contains => "|=",
            LineOp::NotContains => "!=",
            LineOp::Match => "|~",
            LineOp::NotMatch => "!~",
        }
    }
}

/// A line filter: `op "a" or "b" ...`. Positive filters keep lines matching any alternative;
/// negative ones keep lines matching none.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LineFilter {
    /// Comparison.
    pub op: LineOp,
    /// Substrings (for `|=`, `!=`) or unanchored expressions (for `|~`, `!~`).
    pub alts: Vec<LinePattern>,
}

/// One alternative of a line filter.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LinePattern {
    /// The literal or the expression source.
    pub text: String,
    /// The compiled expression for `|~` and `!~`.
    pub re: Option<Re>,
}

impl LineFilter {
    /// Whether the line passes.
    pub fn keeps(&self, line: &str) -> bool {
        let hit = |p: &LinePattern| match &p.re {
            Some(r) => r.re.is_match(line),
            None => line.contains(p.text.as_str()),
        };
        match self.op {
            LineOp::Contains | LineOp::Match => self.alts.iter().any(hit),
            LineOp::NotContains | LineOp::NotMatch => !self.alts.iter().any(hit),
        }
    }
}

/// One `label="path"` extraction of `| json`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct JsonParam {
    /// Label to set.
    pub label: String,
    /// Path as written (for printing).
    pub raw: String,
    /// Parsed path.
    pub path: Vec<PathSeg>,
    /// Written without `="path"` (`| json a`).
    pub short: bool,
}

/// One step of a JSON path.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum PathSeg {
    /// An object member.
    Key(String),
    /// An array element.
    Index(usize),
}

/// A numeric comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    /// `==` (or `=` with a number)
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

impl CmpOp {
    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        }
    }

    /// Applies the comparison.
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
        }
    }
}

/// The right-hand side of a numeric label filter.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum NumLit {
    /// A plain number: the label is parsed as a float.
    Number(f64, String),
    /// A duration (ns): the label is parsed as a Go duration.
    Duration(u64, String),
    /// A byte size: the label is parsed as a byte size (`10KB`, `1MiB`).
    Bytes(u64, String),
}

impl NumLit {
    fn raw(&self) -> &str {
        match self {
            NumLit::Number(_, r) | NumLit::Duration(_, r) | NumLit::Bytes(_, r) => r,
        }
    }
}

/// A label filter expression.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum LabelFilter {
    /// Both hold.
    And(Box<LabelFilter>, Box<LabelFilter>),
    /// Either holds.
    Or(Box<LabelFilter>, Box<LabelFilter>),
    /// A string comparison.
    Str(Matcher),
    /// A numeric, duration or byte-size comparison.
    Num {
        /// Label name.
        name: String,
        /// Comparison.
        op: CmpOp,
        /// Right-hand side.
        value: NumLit,
    },
}

/// An item of `drop` / `keep`: a label name, optionally only when its value matches.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LabelSel {
    /// Label name.
    pub name: String,
    /// When present, the stage applies only to values matching it.
    pub matcher: Option<Matcher>,
}

/// A range aggregation over log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RangeFn {
    /// Lines per window.
    CountOverTime,
    /// Lines per second.
    Rate,
    /// Bytes of the lines per window.
    BytesOverTime,
    /// Bytes of the lines per second.
    BytesRate,
}

impl RangeFn {
    fn as_str(self) -> &'static str {
        match self {
            RangeFn::CountOverTime => "count_over_time",
            RangeFn::Rate => "rate",
            RangeFn::BytesOverTime => "bytes_over_time",
            RangeFn::BytesRate => "bytes_rate",
        }
    }
}

/// A vector aggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AggOp {
    /// Sum per group.
    Sum,
    /// Number of series per group.
    Count,
    /// Minimum per group.
    Min,
    /// Maximum per group.
    Max,
    /// Mean per group.
    Avg,
    /// The k largest series per group.
    Topk,
    /// The k smallest series per group.
    Bottomk,
}

impl AggOp {
    fn as_str(self) -> &'static str {
        match self {
            AggOp::Sum => "sum",
            AggOp::Count => "count",
            AggOp::Min => "min",
            AggOp::Max => "max",
            AggOp::Avg => "avg",
            AggOp::Topk => "topk",
            AggOp::Bottomk => "bottomk",
        }
    }
}

/// `by (...)` or `without (...)`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Grouping {
    /// `without` instead of `by`.
    pub without: bool,
    /// The labels.
    pub labels: Vec<String>,
}

/// A binary operator between samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
    /// `^`
    Pow,
    /// A comparison: filters samples.
    Cmp(CmpOp),
}

impl BinOp {
    fn as_str(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Pow => "^",
            BinOp::Cmp(c) => c.as_str(),
        }
    }

    /// Precedence (higher binds tighter) and whether the operator is right-associative.
    fn precedence(self) -> (u8, bool) {
        match self {
            BinOp::Cmp(_) => (1, false),
            BinOp::Add | BinOp::Sub => (2, false),
            BinOp::Mul | BinOp::Div | BinOp::Mod => (3, false),
            BinOp::Pow => (4, true),
        }
    }
}

/// A metric query.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum MetricExpr {
    /// `count_over_time({...} | ... [5m])` and friends.
    Range {
        /// The function.
        func: RangeFn,
        /// The log query counted.
        log: LogExpr,
        /// Window length in ns.
        range_ns: u64,
        /// The window as written.
        range_raw: String,
    },
    /// `sum by (a) (...)` and friends.
    Agg {
        /// The aggregation.
        op: AggOp,
        /// `k` of topk / bottomk.
        param: Option<f64>,
        /// Grouping; `None`: everything in one group.
        grouping: Option<Grouping>,
        /// What is aggregated.
        inner: Box<MetricExpr>,
    },
    /// A number.
    Number(f64, String),
    /// `vector(n)`: a series without labels.
    Vector(f64, String),
    /// `lhs op rhs`, matching series with identical label sets.
    Binary {
        /// Operator.
        op: BinOp,
        /// Left side.
        lhs: Box<MetricExpr>,
        /// Right side.
        rhs: Box<MetricExpr>,
    },
}

// ---------------------------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------------------------

/// Writes `s` as a double-quoted LogQL string.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.name, self.op.as_str(), quote(&self.value))
    }
}

impl fmt::Display for LogExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, m) in self.matchers.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{m}")?;
        }
        f.write_str("}")?;
        for s in &self.stages {
            write!(f, " {s}")?;
        }
        Ok(())
    }
}

fn write_sels(f: &mut fmt::Formatter<'_>, sels: &[LabelSel]) -> fmt::Result {
    for (i, s) in sels.iter().enumerate() {
        f.write_str(if i == 0 { " " } else { ", " })?;
        match &s.matcher {
            Some(m) => write!(f, "{m}")?,
            None => f.write_str(&s.name)?,
        }
    }
    Ok(())
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Line(l) => {
                f.write_str(l.op.as_str())?;
                for (i, a) in l.alts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" or")?;
                    }
                    write!(f, " {}", quote(&a.text))?;
                }
                Ok(())
            }
            Stage::Json(params) => {
                f.write_str("| json")?;
                for (i, p) in params.iter().enumerate() {
                    f.write_str(if i == 0 { " " } else { ", " })?;
                    if p.short {
                        f.write_str(&p.label)?;
                    } else {
                        write!(f, "{}={}", p.label, quote(&p.raw))?;
                    }
                }
                Ok(())
            }
            Stage::Logfmt { strict, keep_empty, params } => {
                f.write_str("| logfmt")?;
                if *strict {
                    f.write_str(" --strict")?;
                }
                if *keep_empty {
                    f.write_str(" --keep-empty")?;
                }
                for (i, (label, key)) in params.iter().enumerate() {
                    f.write_str(if i == 0 { " " } else { ", " })?;
                    write!(f, "{label}={}", quote(key))?;
                }
                Ok(())
            }
            Stage::Label(l) if STAGE_WORDS.contains(&l.leftmost_name()) => write!(f, "| ({l})"),
            Stage::Label(l) => write!(f, "| {l}"),
            Stage::Drop(s) => {
                f.write_str("| drop")?;
                write_sels(f, s)
            }
            Stage::Keep(s) => {
                f.write_str("| keep")?;
                write_sels(f, s)
            }
        }
    }
}

/// Words that start a stage after `|` rather than a label filter.
const STAGE_WORDS: &[&str] = &[
    "json",
    "logfmt",
    "drop",
    "keep",
    "line_format",
    "label_format",
    "pattern",
    "regexp",
    "unpack",
    "decolorize",
    "distinct",
    "unwrap",
];

impl LabelFilter {
    fn leftmost_name(&self) -> &str {
        match self {
            LabelFilter::And(a, _) | LabelFilter::Or(a, _) => a.leftmost_name(),
            LabelFilter::Str(m) => &m.name,
            LabelFilter::Num { name, .. } => name,
        }
    }
}

impl fmt::Display for LabelFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelFilter::And(a, b) => {
                let side = |x: &LabelFilter| match x {
                    LabelFilter::Or(..) => format!("({x})"),
                    _ => x.to_string(),
                };
                write!(f, "{} and {}", side(a), side(b))
            }
            LabelFilter::Or(a, b) => write!(f, "{a} or {b}"),
            LabelFilter::Str(m) => write!(f, "{m}"),
            LabelFilter::Num { name, op, value } => write!(f, "{name} {} {}", op.as_str(), value.raw()),
        }
    }
}

impl fmt::Display for MetricExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricExpr::Range { func, log, range_raw, .. } => {
                write!(f, "{}({log} [{range_raw}])", func.as_str())
            }
            MetricExpr::Agg { op, param, grouping, inner } => {
                f.write_str(op.as_str())?;
                if let Some(g) = grouping {
                    write!(f, " {} ({})", if g.without { "without" } else { "by" }, g.labels.join(", "))?;
                    f.write_str(" ")?;
                }
                match param {
                    Some(k) => write!(f, "({k}, {inner})"),
                    None => write!(f, "({inner})"),
                }
            }
            MetricExpr::Number(_, raw) => f.write_str(raw),
            MetricExpr::Vector(_, raw) => write!(f, "vector({raw})"),
            MetricExpr::Binary { op, lhs, rhs } => {
                // Parentheses only where precedence or associativity need them: a chain as long
                // as the parser takes (`1 - 1 - ...`, built by its loop, not its recursion) prints
                // as flat as it was written, and parses back within the nesting limit.
                let (prec, right) = op.precedence();
                let side = |x: &MetricExpr, is_rhs: bool| match x {
                    MetricExpr::Binary { op: inner, .. } => {
                        let (p, _) = inner.precedence();
                        if p > prec || (p == prec && is_rhs == right) { x.to_string() } else { format!("({x})") }
                    }
                    MetricExpr::Number(v, _) if *v < 0.0 => format!("({x})"),
                    _ => x.to_string(),
                };
                write!(f, "{} {} {}", side(lhs, false), op.as_str(), side(rhs, true))
            }
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Log(l) => write!(f, "{l}"),
            Expr::Metric(m) => write!(f, "{m}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    LBrace,
    RBrace,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Pipe,
    PipeEq,
    PipeTilde,
    PipeGt,
    Neq,
    NotTilde,
    NotGt,
    Eq,
    EqTilde,
    EqEq,
    Gt,
    Ge,
    Lt,
    Le,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Caret,
    Ident(String),
    Str(String),
    /// A number and its text.
    Num(f64, String),
    /// A duration in ns and its text.
    Dur(u64, String),
    /// A byte size and its text.
    Bytes(u64, String),
    /// `--name`
    Flag(String),
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("identifier {s}"),
            Tok::Str(s) => format!("string {}", quote(s)),
            Tok::Num(_, r) | Tok::Dur(_, r) | Tok::Bytes(_, r) => r.clone(),
            Tok::Flag(s) => format!("--{s}"),
            Tok::Eof => "end of query".into(),
            t => format!("\"{}\"", t.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Comma => ",",
            Tok::Pipe => "|",
            Tok::PipeEq => "|=",
            Tok::PipeTilde => "|~",
            Tok::PipeGt => "|>",
            Tok::Neq => "!=",
            Tok::NotTilde => "!~",
            Tok::NotGt => "!>",
            Tok::Eq => "=",
            Tok::EqTilde => "=~",
            Tok::EqEq => "==",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Percent => "%",
            Tok::Caret => "^",
            _ => "?",
        }
    }
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

fn position(src: &str, pos: usize) -> (usize, usize) {
    let before = &src[..pos.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

fn err_at(src: &str, pos: usize, msg: impl Into<String>) -> LogqlError {
    let (line, col) = position(src, pos);
    LogqlError::Parse { line, col, msg: msg.into() }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl<'a> Lexer<'a> {
    fn peek_char(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn tokens(mut self) -> Result<Vec<(Tok, usize)>, LogqlError> {
        let mut out = Vec::new();
        loop {
            self.skip_space();
            let start = self.pos;
            let Some(c) = self.peek_char() else {
                out.push((Tok::Eof, start));
                return Ok(out);
            };
            let two = |s: &str| self.rest().starts_with(s);
            let (tok, len) = if two("|=") {
                (Tok::PipeEq, 2)
            } else if two("|~") {
                (Tok::PipeTilde, 2)
            } else if two("|>") {
                (Tok::PipeGt, 2)
            } else if two("!=") {
                (Tok::Neq, 2)
            } else if two("!~") {
                (Tok::NotTilde, 2)
            } else if two("!>") {
                (Tok::NotGt, 2)
            } else if two("=~") {
                (Tok::EqTilde, 2)
            } else if two("==") {
                (Tok::EqEq, 2)
            } else if two(">=") {
                (Tok::Ge, 2)
            } else if two("<=") {
                (Tok::Le, 2)
            } else if two("--") && self.rest()[2..].chars().next().is_some_and(is_ident_start) {
                self.pos += 2;
                let name = self.take_while(|c| is_ident_char(c) || c == '-');
                out.push((Tok::Flag(name.to_string()), start));
                continue;
            } else {
                match c {
                    '{' => (Tok::LBrace, 1),
                    '}' => (Tok::RBrace, 1),
                    '(' => (Tok::LParen, 1),
                    ')' => (Tok::RParen, 1),
                    '[' => (Tok::LBracket, 1),
                    ']' => (Tok::RBracket, 1),
                    ',' => (Tok::Comma, 1),
                    '|' => (Tok::Pipe, 1),
                    '=' => (Tok::Eq, 1),
                    '>' => (Tok::Gt, 1),
                    '<' => (Tok::Lt, 1),
                    '+' => (Tok::Plus, 1),
                    '-' => (Tok::Minus, 1),
                    '*' => (Tok::Star, 1),
                    '/' => (Tok::Slash, 1),
                    '%' => (Tok::Percent, 1),
                    '^' => (Tok::Caret, 1),
                    '"' => {
                        let s = self.double_quoted()?;
                        out.push((Tok::Str(s), start));
                        continue;
                    }
                    '`' => {
                        let s = self.backquoted()?;
                        out.push((Tok::Str(s), start));
                        continue;
                    }
                    c if c.is_ascii_digit()
                        || (c == '.' && self.rest()[1..].starts_with(|d: char| d.is_ascii_digit())) =>
                    {
                        let t = self.number()?;
                        out.push((t, start));
                        continue;
                    }
                    c if is_ident_start(c) => {
                        let name = self.take_while(is_ident_char);
                        out.push((Tok::Ident(name.to_string()), start));
                        continue;
                    }
                    c => return Err(err_at(self.src, start, format!("unexpected character {c:?}"))),
                }
            };
            self.pos += len;
            out.push((tok, start));
        }
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let n = rest.find(|c: char| !f(c)).unwrap_or(rest.len());
        self.pos += n;
        &rest[..n]
    }

    fn skip_space(&mut self) {
        loop {
            self.take_while(char::is_whitespace);
            if self.peek_char() == Some('#') {
                self.take_while(|c| c != '\n');
            } else {
                return;
            }
        }
    }

    /// A number, or a duration / byte size when letters follow the digits.
    fn number(&mut self) -> Result<Tok, LogqlError> {
        let start = self.pos;
        let text = self.take_while(|c| c.is_ascii_alphanumeric() || c == '.' || c == 'µ' || c == '_');
        // A sign or exponent belongs to the number only in plain float syntax (1e3, 2.5e-3).
        let mut text = text.to_string();
        if text.ends_with(['e', 'E']) && self.rest().starts_with(['+', '-']) {
            let sign = &self.rest()[..1];
            let more: String = self.rest()[1..].chars().take_while(|c| c.is_ascii_digit()).collect();
            if !more.is_empty() {
                text.push_str(sign);
                text.push_str(&more);
                self.pos += 1 + more.len();
            }
        }
        if let Some(v) = parse_plain_number(&text) {
            return Ok(Tok::Num(v, text));
        }
        if let Some(ns) = parse_duration(&text) {
            return Ok(Tok::Dur(ns, text));
        }
        if let Some(b) = parse_bytes(&text) {
            return Ok(Tok::Bytes(b, text));
        }
        Err(err_at(self.src, start, format!("bad number, duration or byte size {text:?}")))
    }

    fn double_quoted(&mut self) -> Result<String, LogqlError> {
        let start = self.pos;
        self.pos += 1;
        let mut bytes: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek_char() else {
                return Err(err_at(self.src, start, "unterminated string"));
            };
            self.pos += c.len_utf8();
            match c {
                '"' => break,
                '\\' => {
                    let esc_at = self.pos - 1;
                    let Some(e) = self.peek_char() else {
                        return Err(err_at(self.src, start, "unterminated string"));
                    };
                    self.pos += e.len_utf8();
                    let simple = match e {
                        'n' => Some(b'\n'),
                        't' => Some(b'\t'),
                        'r' => Some(b'\r'),
                        'a' => Some(0x07),
                        'b' => Some(0x08),
                        'f' => Some(0x0c),
                        'v' => Some(0x0b),
                        '\\' => Some(b'\\'),
                        '"' => Some(b'"'),
                        '\'' => Some(b'\''),
                        _ => None,
                    };
                    if let Some(b) = simple {
                        bytes.push(b);
                        continue;
                    }
                    let bad = || err_at(self.src, esc_at, format!("invalid escape sequence \\{e} in string"));
                    match e {
                        'x' => {
                            let h = self.hex_digits(2).ok_or_else(bad)?;
                            bytes.push(h as u8);
                        }
                        'u' | 'U' => {
                            let n = if e == 'u' { 4 } else { 8 };
                            let v = self.hex_digits(n).ok_or_else(bad)?;
                            let ch = char::from_u32(v).ok_or_else(bad)?;
                            let mut buf = [0u8; 4];
                            bytes.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        '0'..='7' => {
                            let digits: String = std::iter::once(e)
                                .chain(self.rest().chars().take(2).take_while(|d| ('0'..='7').contains(d)))
                                .collect();
                            if digits.len() != 3 {
                                return Err(bad());
                            }
                            self.pos += 2;
                            let v = u32::from_str_radix(&digits, 8).map_err(|_| bad())?;
                            if v > 255 {
                                return Err(bad());
                            }
                            bytes.push(v as u8);
                        }
                        _ => return Err(bad()),
                    }
                }
                c => {
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        String::from_utf8(bytes).map_err(|_| err_at(self.src, start, "string is not valid UTF-8"))
    }

    fn hex_digits(&mut self, n: usize) -> Option<u32> {
        let rest = self.rest();
        let digits = rest.get(..n)?;
        if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        self.pos += n;
        u32::from_str_radix(digits, 16).ok()
    }

    fn backquoted(&mut self) -> Result<String, LogqlError> {
        let start = self.pos;
        let rest = &self.src[start + 1..];
        match rest.find('`') {
            Some(end) => {
                self.pos = start + 1 + end + 1;
                Ok(rest[..end].to_string())
            }
            None => Err(err_at(self.src, start, "unterminated raw string")),
        }
    }
}

fn parse_plain_number(s: &str) -> Option<f64> {
    let digits_ok = s.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
    let has_digit = s.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if !digits_ok || !has_digit {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// A Go / Prometheus duration (`1h30m`, `250ms`, `1.5s`, `2d`) in ns; `None` when not one or
/// beyond ~584 years.
pub(crate) fn parse_duration(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if n == 0 {
            return None;
        }
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86400e9,
            "w" => 7.0 * 86400e9,
            "y" => 365.0 * 86400e9,
            _ => return None,
        };
        rest = &rest[u..];
        total += value * unit;
    }
    (total.is_finite() && total < u64::MAX as f64).then_some(total.round() as u64)
}

/// A byte size (`10KB`, `1.5MiB`, `42b`, case-insensitive units) in bytes.
pub(crate) fn parse_bytes(s: &str) -> Option<u64> {
    let n = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    if n == 0 {
        return None;
    }
    let value: f64 = s[..n].parse().ok()?;
    let mult: f64 = match s[n..].to_ascii_lowercase().as_str() {
        "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "pb" => 1e15,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        "pib" => 1024f64.powi(5),
        _ => return None,
    };
    let v = value * mult;
    (v.is_finite() && v < u64::MAX as f64).then_some(v.round() as u64)
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

/// Range functions LogQL has and obsbox does not run.
const UNSUPPORTED_RANGE_FNS: &[&str] = &[
    "absent_over_time",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "sum_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "quantile_over_time",
    "first_over_time",
    "last_over_time",
    "rate_counter",
];
/// Vector functions LogQL has and obsbox does not run.
const UNSUPPORTED_FNS: &[&str] =
    &["stddev", "stdvar", "sort", "sort_desc", "approx_topk", "label_replace", "count_values", "absent"];
/// Pipeline stages LogQL has and obsbox does not run.
const UNSUPPORTED_STAGES: &[&str] =
    &["line_format", "label_format", "pattern", "regexp", "unpack", "decolorize", "distinct", "unwrap"];

struct Parser<'a> {
    src: &'a str,
    toks: Vec<(Tok, usize)>,
    i: usize,
    depth: usize,
}

/// The size of a parsed query: nesting depth, stream selectors, and clauses (pipeline stages,
/// line filter alternatives and label filter comparisons).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    pub depth: usize,
    pub selectors: usize,
    pub clauses: usize,
}

/// Measures `e` (see [`Shape`]).
pub(crate) fn shape(e: &Expr) -> Shape {
    fn label_filter(f: &LabelFilter, depth: usize, s: &mut Shape) {
        s.depth = s.depth.max(depth);
        match f {
            LabelFilter::And(a, b) | LabelFilter::Or(a, b) => {
                label_filter(a, depth + 1, s);
                label_filter(b, depth + 1, s);
            }
            LabelFilter::Str(_) | LabelFilter::Num { .. } => s.clauses += 1,
        }
    }
    fn log(l: &LogExpr, depth: usize, s: &mut Shape) {
        s.depth = s.depth.max(depth);
        s.selectors += 1;
        for stage in &l.stages {
            match stage {
                Stage::Line(f) => s.clauses += f.alts.len().max(1),
                Stage::Label(f) => label_filter(f, depth + 1, s),
                _ => s.clauses += 1,
            }
        }
    }
    fn metric(m: &MetricExpr, depth: usize, s: &mut Shape) {
        s.depth = s.depth.max(depth);
        match m {
            MetricExpr::Range { log: l, .. } => log(l, depth + 1, s),
            MetricExpr::Agg { inner, .. } => metric(inner, depth + 1, s),
            MetricExpr::Binary { lhs, rhs, .. } => {
                metric(lhs, depth + 1, s);
                metric(rhs, depth + 1, s);
            }
            MetricExpr::Number(..) | MetricExpr::Vector(..) => {}
        }
    }
    let mut s = Shape::default();
    match e {
        Expr::Log(l) => log(l, 1, &mut s),
        Expr::Metric(m) => metric(m, 1, &mut s),
    }
    s
}

/// Parses a LogQL query.
pub(crate) fn parse(src: &str) -> Result<Expr, LogqlError> {
    if src.len() > MAX_QUERY_LEN {
        return Err(LogqlError::Parse {
            line: 1,
            col: 1,
            msg: format!("query too long: {} bytes (at most {MAX_QUERY_LEN})", src.len()),
        });
    }
    let toks = Lexer { src, pos: 0 }.tokens()?;
    let mut p = Parser { src, toks, i: 0, depth: 0 };
    if p.peek() == &Tok::Eof {
        return Err(p.err("empty query"));
    }
    let e = p.expr()?;
    if p.peek() != &Tok::Eof {
        return Err(p.unexpected());
    }
    Ok(e)
}

/// Parses a bare stream selector (`match[]` of `/series`, `query` of the metadata endpoints).
pub(crate) fn parse_selector(src: &str) -> Result<Vec<Matcher>, LogqlError> {
    match parse(src)? {
        Expr::Log(l) => Ok(l.matchers),
        Expr::Metric(_) => Err(LogqlError::Parse { line: 1, col: 1, msg: "expected a stream selector".into() }),
    }
}

/// A parse result that keeps track of the position for errors.
type PResult<T> = Result<T, LogqlError>;

impl<'a> Parser<'a> {
    fn peek(&self) -> &Tok {
        &self.toks[self.i.min(self.toks.len() - 1)].0
    }

    fn peek_at(&self, n: usize) -> &Tok {
        &self.toks[(self.i + n).min(self.toks.len() - 1)].0
    }

    fn pos(&self) -> usize {
        self.toks[self.i.min(self.toks.len() - 1)].1
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn err(&self, msg: impl Into<String>) -> LogqlError {
        err_at(self.src, self.pos(), msg)
    }

    fn unexpected(&self) -> LogqlError {
        self.err(format!("syntax error: unexpected {}", self.peek().describe()))
    }

    fn expect(&mut self, t: Tok, what: &str) -> PResult<()> {
        if *self.peek() == t {
            self.next();
            Ok(())
        } else {
            Err(self.err(format!("syntax error: unexpected {}, expecting {what}", self.peek().describe())))
        }
    }

    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!("query nested more than {MAX_DEPTH} levels deep")));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn ident(&mut self, what: &str) -> PResult<String> {
        match self.peek().clone() {
            Tok::Ident(s) => {
                self.next();
                Ok(s)
            }
            _ => Err(self.err(format!("syntax error: unexpected {}, expecting {what}", self.peek().describe()))),
        }
    }

    fn string(&mut self, what: &str) -> PResult<(String, usize)> {
        let at = self.pos();
        match self.peek().clone() {
            Tok::Str(s) => {
                self.next();
                Ok((s, at))
            }
            _ => Err(self.err(format!("syntax error: unexpected {}, expecting {what}", self.peek().describe()))),
        }
    }

    fn regex(&self, src: &str, anchored: bool, at: usize) -> PResult<Re> {
        let pattern = if anchored { format!("^(?:{src})$") } else { src.to_string() };
        regex::RegexBuilder::new(&pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(|re| Re { src: src.to_string(), re })
            .map_err(|e| {
                let detail = e.to_string();
                let last = detail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("invalid").trim();
                err_at(self.src, at, format!("invalid regular expression {}: {last}", quote(src)))
            })
    }

    // --- metric expressions: precedence climbing -------------------------------------------

    fn expr(&mut self) -> PResult<Expr> {
        self.enter()?;
        let r = self.binary(0);
        self.leave();
        r
    }

    fn binop(&self) -> Option<BinOp> {
        Some(match self.peek() {
            Tok::EqEq => BinOp::Cmp(CmpOp::Eq),
            Tok::Neq => BinOp::Cmp(CmpOp::Ne),
            Tok::Gt => BinOp::Cmp(CmpOp::Gt),
            Tok::Ge => BinOp::Cmp(CmpOp::Ge),
            Tok::Lt => BinOp::Cmp(CmpOp::Lt),
            Tok::Le => BinOp::Cmp(CmpOp::Le),
            Tok::Plus => BinOp::Add,
            Tok::Minus => BinOp::Sub,
            Tok::Star => BinOp::Mul,
            Tok::Slash => BinOp::Div,
            Tok::Percent => BinOp::Mod,
            Tok::Caret => BinOp::Pow,
            _ => return None,
        })
    }

    fn binary(&mut self, min_prec: u8) -> PResult<Expr> {
        let mut lhs = self.unary()?;
        loop {
            if let Tok::Ident(w) = self.peek()
                && matches!(w.as_str(), "and" | "or" | "unless")
            {
                return Err(LogqlError::Unsupported(format!("set operator {w}")));
            }
            let Some(op) = self.binop() else { break };
            let (prec, right) = op.precedence();
            if prec < min_prec {
                break;
            }
            let op_at = self.pos();
            self.next();
            if let Tok::Ident(w) = self.peek() {
                match w.as_str() {
                    "bool" => return Err(LogqlError::Unsupported("bool modifier".into())),
                    "on" | "ignoring" => return Err(LogqlError::Unsupported(format!("vector matching with {w}"))),
                    _ => {}
                }
            }
            self.enter()?;
            let rhs = self.binary(if right { prec } else { prec + 1 });
            self.leave();
            let rhs = rhs?;
            if let Tok::Ident(w) = self.peek()
                && matches!(w.as_str(), "group_left" | "group_right")
            {
                return Err(LogqlError::Unsupported(format!("vector matching with {w}")));
            }
            let (Expr::Metric(l), Expr::Metric(r)) = (lhs, rhs) else {
                return Err(err_at(
                    self.src,
                    op_at,
                    "a log query cannot be an operand of a binary operation (wrap it in a range aggregation)",
                ));
            };
            lhs = Expr::Metric(MetricExpr::Binary { op, lhs: Box::new(l), rhs: Box::new(r) });
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> PResult<Expr> {
        if matches!(self.peek(), Tok::Minus | Tok::Plus) {
            let neg = *self.peek() == Tok::Minus;
            if let Tok::Num(v, raw) = self.peek_at(1).clone() {
                self.next();
                self.next();
                return Ok(if neg {
                    Expr::Metric(MetricExpr::Number(-v, format!("-{raw}")))
                } else {
                    Expr::Metric(MetricExpr::Number(v, raw))
                });
            }
            return Err(LogqlError::Unsupported("unary operator on an expression".into()));
        }
        self.primary()
    }

    fn primary(&mut self) -> PResult<Expr> {
        match self.peek().clone() {
            Tok::LParen => {
                self.next();
                let e = self.expr()?;
                self.expect(Tok::RParen, "\")\"")?;
                Ok(e)
            }
            Tok::Num(v, raw) => {
                self.next();
                Ok(Expr::Metric(MetricExpr::Number(v, raw)))
            }
            Tok::LBrace => {
                let l = self.log_expr()?;
                if *self.peek() == Tok::LBracket {
                    return Err(
                        self.err("a range [..] is allowed only inside a range aggregation such as count_over_time")
                    );
                }
                Ok(Expr::Log(l))
            }
            Tok::Ident(name) => self.function(&name).map(Expr::Metric),
            _ => Err(self.unexpected()),
        }
    }

    fn function(&mut self, name: &str) -> PResult<MetricExpr> {
        let at = self.pos();
        let range_fn = match name {
            "count_over_time" => Some(RangeFn::CountOverTime),
            "rate" => Some(RangeFn::Rate),
            "bytes_over_time" => Some(RangeFn::BytesOverTime),
            "bytes_rate" => Some(RangeFn::BytesRate),
            _ => None,
        };
        if let Some(func) = range_fn {
            self.next();
            return self.range_aggregation(func);
        }
        let agg = match name {
            "sum" => Some(AggOp::Sum),
            "count" => Some(AggOp::Count),
            "min" => Some(AggOp::Min),
            "max" => Some(AggOp::Max),
            "avg" => Some(AggOp::Avg),
            "topk" => Some(AggOp::Topk),
            "bottomk" => Some(AggOp::Bottomk),
            _ => None,
        };
        if let Some(op) = agg {
            self.next();
            return self.vector_aggregation(op);
        }
        if name == "vector" {
            self.next();
            self.expect(Tok::LParen, "\"(\"")?;
            let (v, raw) = self.signed_number()?;
            self.expect(Tok::RParen, "\")\"")?;
            return Ok(MetricExpr::Vector(v, raw));
        }
        if UNSUPPORTED_RANGE_FNS.contains(&name) || UNSUPPORTED_FNS.contains(&name) {
            return Err(LogqlError::Unsupported(name.to_string()));
        }
        if matches!(name, "and" | "or" | "unless" | "by" | "without" | "offset") {
            return Err(self.unexpected());
        }
        Err(err_at(self.src, at, format!("unknown function {name}")))
    }

    fn signed_number(&mut self) -> PResult<(f64, String)> {
        let neg = if *self.peek() == Tok::Minus {
            self.next();
            true
        } else {
            false
        };
        match self.peek().clone() {
            Tok::Num(v, raw) => {
                self.next();
                Ok(if neg { (-v, format!("-{raw}")) } else { (v, raw) })
            }
            _ => Err(self.err(format!("syntax error: unexpected {}, expecting a number", self.peek().describe()))),
        }
    }

    fn range_aggregation(&mut self, func: RangeFn) -> PResult<MetricExpr> {
        self.expect(Tok::LParen, "\"(\"")?;
        self.enter()?;
        let r = self.log_range();
        self.leave();
        let (log, range_ns, range_raw) = r?;
        if matches!(self.peek(), Tok::Ident(w) if w == "offset") {
            return Err(LogqlError::Unsupported("offset".into()));
        }
        self.expect(Tok::RParen, "\")\"")?;
        if matches!(self.peek(), Tok::Ident(w) if w == "by" || w == "without") {
            return Err(self.err(format!("grouping is not allowed on {} without unwrap", func.as_str())));
        }
        Ok(MetricExpr::Range { func, log, range_ns, range_raw })
    }

    /// `selector [range] pipeline`, `selector pipeline [range]` or `(log expr) [range]`.
    fn log_range(&mut self) -> PResult<(LogExpr, u64, String)> {
        if *self.peek() == Tok::LParen {
            self.next();
            self.enter()?;
            let l = self.log_expr();
            self.leave();
            let l = l?;
            self.expect(Tok::RParen, "\")\"")?;
            let (ns, raw) = self.range()?;
            return Ok((l, ns, raw));
        }
        let matchers = self.selector()?;
        let mut range = None;
        if *self.peek() == Tok::LBracket {
            range = Some(self.range()?);
        }
        let stages = self.pipeline()?;
        if range.is_none() {
            if *self.peek() != Tok::LBracket {
                return Err(self.err(format!(
                    "syntax error: unexpected {}, expecting a range such as [5m]",
                    self.peek().describe()
                )));
            }
            range = Some(self.range()?);
        }
        let (ns, raw) = range.unwrap_or_default();
        Ok((LogExpr { matchers, stages }, ns, raw))
    }

    fn range(&mut self) -> PResult<(u64, String)> {
        self.expect(Tok::LBracket, "\"[\"")?;
        let r = match self.peek().clone() {
            Tok::Dur(ns, raw) if ns > 0 => {
                self.next();
                (ns, raw)
            }
            Tok::Dur(..) => return Err(self.err("the range must be positive")),
            Tok::Num(..) => return Err(self.err("the range needs a unit, as in [5m]")),
            _ => {
                return Err(self.err(format!(
                    "syntax error: unexpected {}, expecting a duration such as 5m",
                    self.peek().describe()
                )));
            }
        };
        self.expect(Tok::RBracket, "\"]\"")?;
        Ok(r)
    }

    fn grouping(&mut self) -> PResult<Option<Grouping>> {
        let without = match self.peek() {
            Tok::Ident(w) if w == "by" => false,
            Tok::Ident(w) if w == "without" => true,
            _ => return Ok(None),
        };
        self.next();
        self.expect(Tok::LParen, "\"(\"")?;
        let mut labels = Vec::new();
        if *self.peek() != Tok::RParen {
            loop {
                labels.push(self.ident("a label name")?);
                if *self.peek() == Tok::Comma {
                    self.next();
                    continue;
                }
                break;
            }
        }
        self.expect(Tok::RParen, "\")\"")?;
        Ok(Some(Grouping { without, labels }))
    }

    fn vector_aggregation(&mut self, op: AggOp) -> PResult<MetricExpr> {
        let mut grouping = self.grouping()?;
        self.expect(Tok::LParen, "\"(\"")?;
        let param = if matches!(op, AggOp::Topk | AggOp::Bottomk) {
            let (k, _) = self.signed_number()?;
            if k < 1.0 || k.fract() != 0.0 || k > 1e6 {
                return Err(self.err(format!("{} needs a whole number k between 1 and 1000000", op.as_str())));
            }
            self.expect(Tok::Comma, "\",\"")?;
            Some(k)
        } else {
            None
        };
        let inner = self.expr()?;
        self.expect(Tok::RParen, "\")\"")?;
        if let Some(g) = self.grouping()? {
            if grouping.is_some() {
                return Err(self.err("grouping given twice"));
            }
            grouping = Some(g);
        }
        let Expr::Metric(inner) = inner else {
            return Err(self.err(format!(
                "{} needs a metric query such as count_over_time({{...}}[5m]), not a log query",
                op.as_str()
            )));
        };
        Ok(MetricExpr::Agg { op, param, grouping, inner: Box::new(inner) })
    }

    // --- log expressions --------------------------------------------------------------------

    fn log_expr(&mut self) -> PResult<LogExpr> {
        let matchers = self.selector()?;
        let stages = self.pipeline()?;
        Ok(LogExpr { matchers, stages })
    }

    fn selector(&mut self) -> PResult<Vec<Matcher>> {
        let open = self.pos();
        self.expect(Tok::LBrace, "\"{\"")?;
        let mut matchers = Vec::new();
        while *self.peek() != Tok::RBrace {
            matchers.push(self.matcher()?);
            match self.peek() {
                Tok::Comma => {
                    self.next();
                }
                Tok::RBrace => {}
                _ => return Err(self.unexpected()),
            }
        }
        self.next();
        if matchers.is_empty() {
            return Err(err_at(self.src, open, "a stream selector needs at least one label matcher"));
        }
        if matchers.iter().all(|m| m.matches("")) {
            return Err(err_at(
                self.src,
                open,
                "queries require at least one regexp or equality matcher that does not have an \
                 empty-compatible value. For instance, app=~\".*\" does not meet this requirement, \
                 but app=~\".+\" will",
            ));
        }
        Ok(matchers)
    }

    fn match_op(&mut self) -> Option<MatchOp> {
        let op = match self.peek() {
            Tok::Eq => MatchOp::Eq,
            Tok::Neq => MatchOp::Ne,
            Tok::EqTilde => MatchOp::Re,
            Tok::NotTilde => MatchOp::NotRe,
            _ => return None,
        };
        self.next();
        Some(op)
    }

    fn matcher(&mut self) -> PResult<Matcher> {
        let name = self.ident("a label name")?;
        let Some(op) = self.match_op() else {
            return Err(self
                .err(format!("syntax error: unexpected {}, expecting one of =, !=, =~, !~", self.peek().describe())));
        };
        let (value, at) = self.string("a string")?;
        self.make_matcher(name, op, value, at)
    }

    fn make_matcher(&self, name: String, op: MatchOp, value: String, at: usize) -> PResult<Matcher> {
        let re = match op {
            MatchOp::Re | MatchOp::NotRe => Some(self.regex(&value, true, at)?),
            _ => None,
        };
        Ok(Matcher { name, op, value, re })
    }

    fn pipeline(&mut self) -> PResult<Vec<Stage>> {
        let mut stages = Vec::new();
        loop {
            let op = match self.peek() {
                Tok::PipeEq => LineOp::Contains,
                Tok::Neq => LineOp::NotContains,
                Tok::PipeTilde => LineOp::Match,
                Tok::NotTilde => LineOp::NotMatch,
                Tok::PipeGt | Tok::NotGt => {
                    return Err(LogqlError::Unsupported(format!("pattern line filter {}", self.peek().symbol())));
                }
                Tok::Pipe => {
                    self.next();
                    stages.push(self.stage()?);
                    continue;
                }
                _ => return Ok(stages),
            };
            self.next();
            stages.push(Stage::Line(self.line_filter(op)?));
        }
    }

    fn line_filter(&mut self, op: LineOp) -> PResult<LineFilter> {
        let mut alts = Vec::new();
        loop {
            if matches!(self.peek(), Tok::Ident(w) if w == "ip") && *self.peek_at(1) == Tok::LParen {
                return Err(LogqlError::Unsupported("ip() line filter".into()));
            }
            let (text, at) = self.string("a string")?;
            let re = match op {
                LineOp::Match | LineOp::NotMatch => Some(self.regex(&text, false, at)?),
                _ => None,
            };
            alts.push(LinePattern { text, re });
            // `or` continues the filter only when a string follows (otherwise it could be the
            // next stage's label filter `or`, which cannot follow a line filter anyway).
            if matches!(self.peek(), Tok::Ident(w) if w == "or") && matches!(self.peek_at(1), Tok::Str(_)) {
                self.next();
                continue;
            }
            return Ok(LineFilter { op, alts });
        }
    }

    fn stage(&mut self) -> PResult<Stage> {
        let Tok::Ident(word) = self.peek().clone() else {
            if *self.peek() == Tok::LParen {
                return self.label_filter_or().map(Stage::Label);
            }
            return Err(self.err(format!(
                "syntax error: unexpected {}, expecting a parser, a label filter or a stage name after |",
                self.peek().describe()
            )));
        };
        // A stage keyword followed by a comparison is a label name (`| json = "x"`); `!=` and
        // `!~` after a stage keyword start a line filter (`| json != "x"`).
        let is_label = matches!(self.peek_at(1), Tok::Eq | Tok::EqTilde | Tok::EqEq)
            || matches!(self.peek_at(1), Tok::Gt | Tok::Ge | Tok::Lt | Tok::Le);
        if !is_label {
            match word.as_str() {
                "json" => {
                    self.next();
                    return self.json_params().map(Stage::Json);
                }
                "logfmt" => {
                    self.next();
                    return self.logfmt();
                }
                "drop" => {
                    self.next();
                    return self.label_sels("drop").map(Stage::Drop);
                }
                "keep" => {
                    self.next();
                    return self.label_sels("keep").map(Stage::Keep);
                }
                w if UNSUPPORTED_STAGES.contains(&w) => return Err(LogqlError::Unsupported(w.to_string())),
                _ => {}
            }
        }
        self.label_filter_or().map(Stage::Label)
    }

    fn json_params(&mut self) -> PResult<Vec<JsonParam>> {
        let mut params = Vec::new();
        while let Tok::Ident(label) = self.peek().clone() {
            self.next();
            let param = if *self.peek() == Tok::Eq {
                self.next();
                let (raw, at) = self.string("a JSON path string")?;
                let path = parse_json_path(&raw).map_err(|m| err_at(self.src, at, m))?;
                JsonParam { label, raw, path, short: false }
            } else {
                JsonParam { path: vec![PathSeg::Key(label.clone())], raw: label.clone(), label, short: true }
            };
            params.push(param);
            if *self.peek() != Tok::Comma {
                break;
            }
            self.next();
        }
        Ok(params)
    }

    fn logfmt(&mut self) -> PResult<Stage> {
        let (mut strict, mut keep_empty) = (false, false);
        while let Tok::Flag(f) = self.peek().clone() {
            match f.as_str() {
                "strict" => strict = true,
                "keep-empty" => keep_empty = true,
                _ => return Err(self.err(format!("unknown logfmt flag --{f}"))),
            }
            self.next();
        }
        let mut params = Vec::new();
        while let Tok::Ident(label) = self.peek().clone() {
            self.next();
            let key = if *self.peek() == Tok::Eq {
                self.next();
                self.string("a key string")?.0
            } else {
                label.clone()
            };
            params.push((label, key));
            if *self.peek() != Tok::Comma {
                break;
            }
            self.next();
        }
        Ok(Stage::Logfmt { strict, keep_empty, params })
    }

    fn label_sels(&mut self, stage: &str) -> PResult<Vec<LabelSel>> {
        let mut sels = Vec::new();
        loop {
            let name = self.ident(&format!("a label name after {stage}"))?;
            let matcher = match self.match_op() {
                Some(op) => {
                    let (value, at) = self.string("a string")?;
                    Some(self.make_matcher(name.clone(), op, value, at)?)
                }
                None => None,
            };
            sels.push(LabelSel { name, matcher });
            if *self.peek() != Tok::Comma {
                return Ok(sels);
            }
            self.next();
        }
    }

    fn label_filter_or(&mut self) -> PResult<LabelFilter> {
        self.enter()?;
        let r = self.label_filter_or_inner();
        self.leave();
        r
    }

    fn label_filter_or_inner(&mut self) -> PResult<LabelFilter> {
        let mut lhs = self.label_filter_and()?;
        while matches!(self.peek(), Tok::Ident(w) if w == "or") {
            self.next();
            let rhs = self.label_filter_and()?;
            lhs = LabelFilter::Or(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn label_filter_and(&mut self) -> PResult<LabelFilter> {
        let mut lhs = self.label_filter_primary()?;
        loop {
            match self.peek() {
                Tok::Ident(w) if w == "and" => {
                    self.next();
                }
                Tok::Comma => {
                    self.next();
                }
                // Juxtaposition is `and` too: `| a="x" b="y"`.
                Tok::Ident(w) if !matches!(w.as_str(), "or" | "offset") && !matches!(self.peek_at(1), Tok::LParen) => {}
                Tok::LParen => {}
                _ => return Ok(lhs),
            }
            let rhs = self.label_filter_primary()?;
            lhs = LabelFilter::And(Box::new(lhs), Box::new(rhs));
        }
    }

    fn label_filter_primary(&mut self) -> PResult<LabelFilter> {
        if *self.peek() == Tok::LParen {
            self.next();
            let f = self.label_filter_or()?;
            self.expect(Tok::RParen, "\")\"")?;
            return Ok(f);
        }
        let name = self.ident("a label name")?;
        let op_at = self.pos();
        let op_tok = self.next();
        let value_tok = self.peek().clone();
        if matches!(value_tok, Tok::Ident(ref w) if w == "ip") && *self.peek_at(1) == Tok::LParen {
            return Err(LogqlError::Unsupported("ip() label filter".into()));
        }
        let num = |v: &Tok| match v {
            Tok::Num(x, r) => Some(NumLit::Number(*x, r.clone())),
            Tok::Dur(x, r) => Some(NumLit::Duration(*x, r.clone())),
            Tok::Bytes(x, r) => Some(NumLit::Bytes(*x, r.clone())),
            _ => None,
        };
        let str_op = match op_tok {
            Tok::Eq => Some(MatchOp::Eq),
            Tok::Neq => Some(MatchOp::Ne),
            Tok::EqTilde => Some(MatchOp::Re),
            Tok::NotTilde => Some(MatchOp::NotRe),
            _ => None,
        };
        let cmp_op = match op_tok {
            Tok::Eq | Tok::EqEq => Some(CmpOp::Eq),
            Tok::Neq => Some(CmpOp::Ne),
            Tok::Gt => Some(CmpOp::Gt),
            Tok::Ge => Some(CmpOp::Ge),
            Tok::Lt => Some(CmpOp::Lt),
            Tok::Le => Some(CmpOp::Le),
            _ => None,
        };
        if let (Some(op), Tok::Str(value)) = (str_op, &value_tok) {
            let at = self.pos();
            self.next();
            return Ok(LabelFilter::Str(self.make_matcher(name, op, value.clone(), at)?));
        }
        if let (Some(op), Some(value)) = (cmp_op, num(&value_tok)) {
            self.next();
            return Ok(LabelFilter::Num { name, op, value });
        }
        if let (Some(op), Tok::Minus, Tok::Num(v, raw)) = (cmp_op, &value_tok, self.peek_at(1).clone()) {
            self.next();
            self.next();
            return Ok(LabelFilter::Num { name, op, value: NumLit::Number(-v, format!("-{raw}")) });
        }
        if str_op.is_none() && cmp_op.is_none() {
            return Err(err_at(
                self.src,
                op_at,
                format!(
                    "syntax error: unexpected {}, expecting a comparison (=, !=, =~, !~, ==, >, >=, <, <=)",
                    op_tok.describe()
                ),
            ));
        }
        let expecting = match (str_op, cmp_op) {
            (None, _) => "a number, duration or byte size",
            (_, None) => "a string",
            _ => "a string or a number",
        };
        Err(self.err(format!("syntax error: unexpected {}, expecting {expecting}", value_tok.describe())))
    }
}

/// Parses a `| json` path: `a.b[0]["c d"]`.
fn parse_json_path(s: &str) -> Result<Vec<PathSeg>, String> {
    let bad = || format!("invalid JSON path {}", quote(s));
    let mut out = Vec::new();
    let mut rest = s;
    let mut first = true;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(bad)?;
            let inner = r[..end].trim();
            if let Some(q) = inner.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
                out.push(PathSeg::Key(q.to_string()));
            } else {
                out.push(PathSeg::Index(inner.parse().map_err(|_| bad())?));
            }
            rest = &r[end + 1..];
        } else {
            let r = if first { rest } else { rest.strip_prefix('.').ok_or_else(bad)? };
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return Err(bad());
            }
            out.push(PathSeg::Key(r[..end].to_string()));
            rest = &r[end..];
        }
        first = false;
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(q: &str) -> Expr {
        match parse(q) {
            Ok(e) => e,
            Err(e) => panic!("{q}: {e}"),
        }
    }

    fn err(q: &str) -> String {
        match parse(q) {
            Ok(e) => panic!("{q} parsed as {e:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn log(q: &str) -> LogExpr {
        match ok(q) {
            Expr::Log(l) => l,
            e => panic!("not a log query: {e:?}"),
        }
    }

    fn metric(q: &str) -> MetricExpr {
        match ok(q) {
            Expr::Metric(m) => m,
            e => panic!("not a metric query: {e:?}"),
        }
    }

    /// Printing and parsing again gives the same tree.
    fn round_trip(q: &str) {
        let e = ok(q);
        let printed = e.to_string();
        let again = parse(&printed).unwrap_or_else(|err| panic!("{q} printed as {printed}: {err}"));
        assert_eq!(e, again, "{q} printed as {printed}");
    }

    #[test]
    fn selectors() {
        let l = log(r#"{service_name="api", level!="debug", k8s_ns=~"prod-.*", env!~"dev|test"}"#);
        let ops: Vec<_> = l.matchers.iter().map(|m| (m.name.as_str(), m.op, m.value.as_str())).collect();
        assert_eq!(
            ops,
            vec![
                ("service_name", MatchOp::Eq, "api"),
                ("level", MatchOp::Ne, "debug"),
                ("k8s_ns", MatchOp::Re, "prod-.*"),
                ("env", MatchOp::NotRe, "dev|test"),
            ]
        );
        assert!(l.matchers[2].matches("prod-eu"));
        assert!(!l.matchers[2].matches("xprod-eu"), "label regexes are anchored");
        assert!(l.matchers[3].matches("staging"));
        assert!(!l.matchers[3].matches("dev"));
        // A trailing comma is accepted, as by Loki.
        assert_eq!(log(r#"{a="b",}"#).matchers.len(), 1);
    }

    #[test]
    fn strings_escapes_and_backticks() {
        let l = log(r#"{a="x\"y\\z\n\t\u00e9\x41\101"} |= `raw \d+ "q"`"#);
        assert_eq!(l.matchers[0].value, "x\"y\\z\n\té\u{41}A");
        let Stage::Line(f) = &l.stages[0] else { panic!() };
        assert_eq!(f.alts[0].text, r#"raw \d+ "q""#);
        assert!(err(r#"{a="b\q"}"#).contains("invalid escape sequence \\q"));
        assert!(err(r#"{a="b"#).contains("unterminated string"));
        assert!(err("{a=`b}").contains("unterminated raw string"));
        assert!(err(r#"{a="\xff"}"#).contains("not valid UTF-8"));
    }

    #[test]
    fn line_filters() {
        let l = log(r#"{a="b"} |= "error" != "timeout" |~ "(?i)fail(ed)?" !~ "debug" |= "x" or "y""#);
        let ops: Vec<_> = l
            .stages
            .iter()
            .map(|s| match s {
                Stage::Line(f) => (f.op, f.alts.len()),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            ops,
            vec![
                (LineOp::Contains, 1),
                (LineOp::NotContains, 1),
                (LineOp::Match, 1),
                (LineOp::NotMatch, 1),
                (LineOp::Contains, 2)
            ]
        );
        let f = |i: usize| match &l.stages[i] {
            Stage::Line(f) => f.clone(),
            _ => panic!(),
        };
        assert!(f(0).keeps("an error here") && !f(0).keeps("an Error here"), "|= is case-sensitive");
        assert!(f(1).keeps("ok") && !f(1).keeps("a timeout"));
        assert!(f(2).keeps("it FAILED") && !f(2).keeps("fine"), "|~ matches anywhere");
        assert!(f(3).keeps("info") && !f(3).keeps("some debug line"));
        assert!(f(4).keeps("y only") && !f(4).keeps("neither"));
        let neg = log(r#"{a="b"} != "x" or "y""#);
        let Stage::Line(n) = &neg.stages[0] else { panic!() };
        assert!(n.keeps("zzz") && !n.keeps("has y"), "a negative filter with or keeps lines matching none");
    }

    #[test]
    fn parsers_and_label_filters() {
        let l = log(
            r#"{a="b"} | json | status >= 500 and method="GET" or (latency > 250ms, size <= 1KiB) | logfmt --strict x="y" | level=~"err.*" | drop __error__, __error_details__ | keep a, b="c""#,
        );
        assert!(matches!(l.stages[0], Stage::Json(ref p) if p.is_empty()));
        let Stage::Label(LabelFilter::Or(lhs, rhs)) = &l.stages[1] else { panic!("{:?}", l.stages[1]) };
        assert!(matches!(**lhs, LabelFilter::And(..)));
        let LabelFilter::And(a, b) = &**rhs else { panic!() };
        assert!(matches!(**a, LabelFilter::Num { op: CmpOp::Gt, value: NumLit::Duration(250_000_000, _), .. }));
        assert!(matches!(**b, LabelFilter::Num { op: CmpOp::Le, value: NumLit::Bytes(1024, _), .. }));
        assert!(matches!(&l.stages[2], Stage::Logfmt { strict: true, keep_empty: false, params } if params.len() == 1));
        assert!(matches!(&l.stages[3], Stage::Label(LabelFilter::Str(m)) if m.op == MatchOp::Re));
        assert!(matches!(&l.stages[4], Stage::Drop(s) if s.len() == 2));
        assert!(matches!(&l.stages[5], Stage::Keep(s) if s.len() == 2 && s[1].matcher.is_some()));
        // Juxtaposed filters are `and`; `=` with a number compares numerically.
        let l = log(r#"{a="b"} | x="1" y!="2" | code = 200 | n == -1"#);
        assert!(matches!(&l.stages[0], Stage::Label(LabelFilter::And(..))));
        assert!(matches!(&l.stages[1], Stage::Label(LabelFilter::Num { op: CmpOp::Eq, .. })));
        assert!(
            matches!(&l.stages[2], Stage::Label(LabelFilter::Num { value: NumLit::Number(v, _), .. }) if *v == -1.0)
        );
        // Keywords can be label names.
        let l = log(r#"{a="b"} | json="x""#);
        assert!(matches!(&l.stages[0], Stage::Label(LabelFilter::Str(m)) if m.name == "json"));
    }

    #[test]
    fn json_params() {
        let l = log(r#"{a="b"} | json first="servers[0]", ua=`request.headers["User-Agent"]`, status"#);
        let Stage::Json(p) = &l.stages[0] else { panic!() };
        assert_eq!(p[0].path, vec![PathSeg::Key("servers".into()), PathSeg::Index(0)]);
        assert_eq!(
            p[1].path,
            vec![PathSeg::Key("request".into()), PathSeg::Key("headers".into()), PathSeg::Key("User-Agent".into())]
        );
        assert!(p[2].short);
        assert!(err(r#"{a="b"} | json x="a..b""#).contains("invalid JSON path"));
        assert!(err(r#"{a="b"} | json x="a[z]""#).contains("invalid JSON path"));
    }

    #[test]
    fn metric_queries() {
        let m = metric(r#"count_over_time({a="b"} |= "x" [5m])"#);
        assert!(matches!(m, MetricExpr::Range { func: RangeFn::CountOverTime, range_ns: 300_000_000_000, .. }));
        let m = metric(r#"rate({a="b"}[1m] | json)"#);
        assert!(matches!(&m, MetricExpr::Range { func: RangeFn::Rate, log, .. } if log.stages.len() == 1));
        let m = metric(r#"sum by (level) (count_over_time({a="b"} | drop __error__[1m]))"#);
        assert!(matches!(&m, MetricExpr::Agg { op: AggOp::Sum, grouping: Some(g), .. } if g.labels == ["level"]));
        let m = metric(r#"sum(rate({a="b"}[1m])) by (service_name, level)"#);
        assert!(matches!(&m, MetricExpr::Agg { grouping: Some(g), .. } if g.labels.len() == 2 && !g.without));
        let m = metric(r#"topk(3, sum without (x) (bytes_rate({a="b"}[30s])))"#);
        assert!(matches!(&m, MetricExpr::Agg { op: AggOp::Topk, param: Some(3.0), .. }));
        let m = metric("vector(1)+vector(1)");
        assert!(matches!(m, MetricExpr::Binary { op: BinOp::Add, .. }));
        // Precedence: * before +, ^ right-associative, comparisons last.
        let m = metric("1 + 2 * 3 ^ 2 ^ 1 > 4");
        let MetricExpr::Binary { op: BinOp::Cmp(CmpOp::Gt), lhs, .. } = m else { panic!() };
        let MetricExpr::Binary { op: BinOp::Add, rhs, .. } = *lhs else { panic!() };
        let MetricExpr::Binary { op: BinOp::Mul, rhs, .. } = *rhs else { panic!() };
        assert!(
            matches!(*rhs, MetricExpr::Binary { op: BinOp::Pow, ref rhs, .. } if matches!(**rhs, MetricExpr::Binary { op: BinOp::Pow, .. }))
        );
        let m = metric(r#"sum(rate({a="b"} |= "err" [5m])) / sum(rate({a="b"}[5m])) * -100"#);
        assert!(matches!(m, MetricExpr::Binary { op: BinOp::Mul, .. }));
        // Parenthesised log query inside a range aggregation; comments.
        metric("count_over_time(({a=\"b\"} |= \"x\")[1h]) # the volume\n");
    }

    #[test]
    fn durations_and_bytes() {
        assert_eq!(parse_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("250ms"), Some(250_000_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration("2d"), Some(172_800_000_000_000));
        assert_eq!(parse_duration("10µs"), Some(10_000));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("99999999999y"), None);
        assert_eq!(parse_bytes("10KB"), Some(10_000));
        assert_eq!(parse_bytes("1MiB"), Some(1 << 20));
        assert_eq!(parse_bytes("42b"), Some(42));
        assert_eq!(parse_bytes("4kx"), None);
    }

    #[test]
    fn syntax_errors_point_at_the_problem() {
        assert_eq!(err(""), "parse error at line 1, col 1: empty query");
        assert_eq!(err("{}"), "parse error at line 1, col 1: a stream selector needs at least one label matcher");
        assert!(err(r#"{a=~".*"}"#).contains("at least one regexp or equality matcher"));
        assert!(err(r#"{a=""}"#).contains("empty-compatible value"));
        assert_eq!(
            err(r#"{a="b"} |= "x" |"#),
            "parse error at line 1, col 17: syntax error: unexpected end of query, expecting a parser, a label filter or a stage name after |"
        );
        assert_eq!(
            err("{a=\"b\"}\n  | foo"),
            "parse error at line 2, col 8: syntax error: unexpected end of query, expecting a comparison (=, !=, =~, !~, ==, >, >=, <, <=)"
        );
        assert_eq!(
            err(r#"{a "b"}"#),
            "parse error at line 1, col 4: syntax error: unexpected string \"b\", expecting one of =, !=, =~, !~"
        );
        assert_eq!(
            err(r#"{a="b"} |= 5"#),
            "parse error at line 1, col 12: syntax error: unexpected 5, expecting a string"
        );
        assert_eq!(
            err(r#"{a=~"(x"}"#).split(':').take(2).collect::<Vec<_>>().join(":"),
            "parse error at line 1, col 5: invalid regular expression \"(x\""
        );
        assert!(err(r#"{a="b"} |~ "[z-a]""#).contains("invalid regular expression \"[z-a]\""));
        assert!(err(r#"{a="b"} | x =~ "+""#).contains("invalid regular expression"));
        assert!(err("{a=\"b\"} $").contains("unexpected character '$'"));
        assert!(err(r#"count_over_time({a="b"})"#).contains("expecting a range such as [5m]"));
        assert!(err(r#"count_over_time({a="b"}[5])"#).contains("the range needs a unit"));
        assert!(err(r#"count_over_time({a="b"}[0s])"#).contains("the range must be positive"));
        assert!(err(r#"{a="b"}[5m]"#).contains("only inside a range aggregation"));
        assert!(err(r#"sum({a="b"})"#).contains("needs a metric query"));
        assert!(err(r#"foo({a="b"})"#).contains("unknown function foo"));
        assert!(err(r#"{a="b"} + 1"#).contains("cannot be an operand"));
        assert!(err(r#"topk(0, rate({a="b"}[1m]))"#).contains("whole number k"));
        assert!(err(r#"sum by (a) (rate({a="b"}[1m])) by (b)"#).contains("grouping given twice"));
        assert!(err(r#"count_over_time({a="b"}[1m]) by (a)"#).contains("grouping is not allowed"));
        assert!(err(r#"{a="b"} | logfmt --bogus"#).contains("unknown logfmt flag --bogus"));
        assert!(err(r#"{a="b"} | x > "y""#).contains("expecting a number, duration or byte size"));
        assert!(err(r#"{a="b"} | x =~ 5"#).contains("expecting a string"));
        assert!(err("{a=\"b\"} |= 1x2").contains("bad number, duration or byte size"));
        assert!(err(r#"sum(rate({a="b"}[1m])"#).contains("expecting \")\""));
        assert!(err(&"(".repeat(100)).contains("nested more than 64 levels"));
        let long = format!("{{a=\"{}\"}}", "x".repeat(MAX_QUERY_LEN));
        assert!(err(&long).contains("query too long"));
    }

    #[test]
    fn unsupported_constructs_are_named() {
        let cases = [
            (r#"{a="b"} | line_format "{{.x}}""#, "line_format"),
            (r#"{a="b"} | label_format x=y"#, "label_format"),
            (r#"{a="b"} | pattern "<x>""#, "pattern"),
            (r#"{a="b"} | regexp "(?P<x>.)""#, "regexp"),
            (r#"{a="b"} | unpack"#, "unpack"),
            (r#"{a="b"} | decolorize"#, "decolorize"),
            (r#"{a="b"} | distinct x"#, "distinct"),
            (r#"sum_over_time({a="b"} | unwrap x [1m])"#, "sum_over_time"),
            (r#"count_over_time({a="b"} | unwrap x [1m])"#, "unwrap"),
            (r#"quantile_over_time(0.9, {a="b"} | unwrap x [1m])"#, "quantile_over_time"),
            (r#"count_over_time({a="b"}[1m] offset 1h)"#, "offset"),
            (r#"rate({a="b"}[1m]) and rate({c="d"}[1m])"#, "set operator and"),
            (r#"rate({a="b"}[1m]) or vector(0)"#, "set operator or"),
            (r#"rate({a="b"}[1m]) > bool 1"#, "bool modifier"),
            (r#"rate({a="b"}[1m]) / on (x) rate({c="d"}[1m])"#, "vector matching with on"),
            (r#"label_replace(rate({a="b"}[1m]), "x", "y", "z", ".*")"#, "label_replace"),
            (r#"sort(rate({a="b"}[1m]))"#, "sort"),
            (r#"{a="b"} |> "<_> x""#, "pattern line filter |>"),
            (r#"{a="b"} |= ip("10.0.0.0/8")"#, "ip() line filter"),
            (r#"{a="b"} | addr = ip("10.0.0.0/8")"#, "ip() label filter"),
            (r#"-rate({a="b"}[1m])"#, "unary operator on an expression"),
        ];
        for (q, what) in cases {
            assert_eq!(err(q), format!("unsupported LogQL: {what} (supported: see docs/logql.md)"), "{q}");
        }
    }

    /// Fragments that combine into LogQL-like text, to reach deep into the parser.
    pub(crate) const FRAGMENTS: &[&str] = &[
        "{",
        "}",
        "(",
        ")",
        "[",
        "]",
        ",",
        "|",
        "|=",
        "!=",
        "|~",
        "!~",
        "|>",
        "=",
        "=~",
        "==",
        ">",
        ">=",
        "<",
        "<=",
        "+",
        "-",
        "*",
        "/",
        "%",
        "^",
        "\"a\"",
        "\"\"",
        "`b.*`",
        "\"(x\"",
        "\"\\u00e9\\n\"",
        "5m",
        "1",
        "-2",
        "0.5",
        "1e3",
        "10KB",
        "250ms",
        "sum",
        "by",
        "without",
        "rate",
        "count_over_time",
        "bytes_rate",
        "topk",
        "vector",
        "json",
        "logfmt",
        "drop",
        "keep",
        "or",
        "and",
        "unless",
        "offset",
        "bool",
        "on",
        "line_format",
        "unwrap",
        "service_name",
        "level",
        "x",
        "__error__",
        "--strict",
        "ip",
        "# c\n",
        "\n",
    ];

    fn soup() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop::collection::vec(prop::sample::select(FRAGMENTS), 0..40).prop_map(|v| v.join(" "))
    }

    /// Generated LogQL from a small grammar: mostly valid, with every construct.
    fn grammar() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let label = prop::sample::select(vec!["service_name", "level", "x", "k8s_pod", "__error__", "json", "drop"]);
        let string = prop_oneof![
            prop::sample::select(vec!["a", "", "x.*", "(?i)err", "a\\\"b", "é"]).prop_map(|s| format!("\"{s}\"")),
            prop::sample::select(vec!["raw", "a|b", ""]).prop_map(|s| format!("`{s}`")),
        ];
        let mop = prop::sample::select(vec!["=", "!=", "=~", "!~"]);
        let matcher = (label.clone(), mop, string.clone()).prop_map(|(l, o, v)| format!("{l}{o}{v}"));
        let selector = prop::collection::vec(matcher, 1..3).prop_map(|m| format!("{{{}}}", m.join(", ")));
        let num = prop::sample::select(vec!["1", "2.5", "250ms", "1h30m", "10KB", "-3"]);
        let cmp = prop::sample::select(vec!["==", "!=", ">", ">=", "<", "<="]);
        let line_op = prop::sample::select(vec!["|=", "!=", "|~", "!~"]);
        let stage = prop_oneof![
            (line_op, string.clone(), proptest::option::of(string.clone()))
                .prop_map(|(o, s, alt)| format!("{o} {s}{}", alt.map(|a| format!(" or {a}")).unwrap_or_default())),
            Just("| json".to_string()),
            Just("| json a=\"b.c[0]\", d".to_string()),
            Just("| logfmt --keep-empty".to_string()),
            // Not a stage keyword first: `| json != 1` is the json stage and a bad line filter.
            (prop::sample::select(vec!["x", "level"]), cmp, num).prop_map(|(l, c, n)| format!("| {l} {c} {n}")),
            (label.clone(), label.clone(), string.clone())
                .prop_map(|(a, b, s)| format!("| {a}={s} or ({b}!={s} and {a}=~{s})")),
            label.clone().prop_map(|l| format!("| drop {l}, y=\"1\"")),
            // A bare name last would take a following `!= "..."` as its matcher, as in Loki.
            label.clone().prop_map(|l| format!("| keep {l}, z=~\"1\"")),
        ];
        let log = (selector, prop::collection::vec(stage, 0..4)).prop_map(|(s, st)| format!("{s} {}", st.join(" ")));
        let range_fn = prop::sample::select(vec!["count_over_time", "rate", "bytes_over_time", "bytes_rate"]);
        let dur = prop::sample::select(vec!["1m", "5s", "1h", "90s"]);
        let leaf = prop_oneof![
            (range_fn, log.clone(), dur).prop_map(|(f, l, d)| format!("{f}({l} [{d}])")),
            Just("vector(1)".to_string()),
            Just("3".to_string()),
        ];
        let metric = leaf.prop_recursive(4, 16, 2, move |inner| {
            let agg = prop::sample::select(vec!["sum", "count", "min", "max", "avg"]);
            let bin = prop::sample::select(vec!["+", "-", "*", "/", "%", "^", ">", "<="]);
            prop_oneof![
                (agg, proptest::option::of(label.clone()), inner.clone()).prop_map(|(a, g, i)| match g {
                    Some(g) => format!("{a} by ({g}) ({i})"),
                    None => format!("{a}({i})"),
                }),
                inner.clone().prop_map(|i| format!("topk(2, {i})")),
                (inner.clone(), bin, inner.clone()).prop_map(|(a, o, b)| format!("({a}) {o} ({b})")),
            ]
        });
        prop_oneof![log, metric]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Generated queries parse (unless a selector is empty-compatible), print back to the same
        /// tree, and survive any single character being cut out.
        #[test]
        fn generated_queries_round_trip(q in grammar(), cut in 0usize..400) {
            match parse(&q) {
                Ok(e) => {
                    let printed = e.to_string();
                    let again = parse(&printed);
                    proptest::prop_assert_eq!(again.as_ref(), Ok(&e), "{} printed as {}", q, printed);
                }
                Err(err) => proptest::prop_assert!(err.to_string().contains("empty-compatible"), "{}: {}", q, err),
            }
            let mut damaged = q.clone();
            if let Some((i, _)) = damaged.char_indices().nth(cut % q.chars().count().max(1)) {
                damaged.remove(i);
            }
            let _ = parse(&damaged);
        }

        /// Any text: an answer, never a panic.
        #[test]
        fn arbitrary_text_never_panics(q in ".{0,200}") {
            let _ = parse(&q);
        }

        /// LogQL-like text: never a panic, and what parses prints back to the same tree.
        #[test]
        fn fragments_never_panic_and_round_trip(q in soup()) {
            if let Ok(e) = parse(&q) {
                let printed = e.to_string();
                let again = parse(&printed);
                proptest::prop_assert_eq!(again.as_ref(), Ok(&e), "{} printed as {}", q, printed);
            }
        }

        /// Arbitrary bytes in strings and regexes are handled by the lexer and regex compiler.
        #[test]
        fn strings_and_regexes(s in "\\PC{0,30}") {
            for q in [format!("{{a={}}}", quote(&s)), format!("{{a=~{}}}", quote(&s)), format!("{{a=\"b\"}} |~ {}", quote(&s))] {
                if let Ok(e) = parse(&q) {
                    let again = parse(&e.to_string());
                    proptest::prop_assert_eq!(again.as_ref(), Ok(&e));
                }
            }
        }
    }

    #[test]
    fn printing_round_trips() {
        for q in [
            r#"{a="b", c!="d", e=~"f.*", g!~"h"}"#,
            r#"{a="b\"q\\"} |= "x" or "y" != "z" |~ `\d+` !~ "w""#,
            r#"{a="b"} | json | x="1" and (y > 2 or z <= 5ms) | logfmt --strict --keep-empty p="q" | drop a, b="c" | keep d"#,
            r#"{a="b"} | json f="a.b[0]", g"#,
            r#"sum by (level) (count_over_time({a="b"} | drop __error__ [1m]))"#,
            r#"topk(2, sum without (x) (rate({a="b"}[5m])))"#,
            r#"(sum(rate({a="b"} |= "e" [5m])) / sum(rate({a="b"}[5m]))) * -100 > 1.5e-3"#,
            "vector(1) + vector(-2) ^ 3 ^ 4",
            "{a=\"\u{1}\"}",
            "(1 - 2) - 3 - (4 - 5)",
            "(1 + 2) * 3 / (4 % 5) ^ (6 ^ 7) ^ 8 > 1 == 0",
        ] {
            round_trip(q);
        }
        // Parentheses only where precedence or associativity need them.
        for (q, printed) in [
            ("((1 - 2) - 3) - (4 - 5)", "1 - 2 - 3 - (4 - 5)"),
            ("(1 * 2) + (3 * 4)", "1 * 2 + 3 * 4"),
            ("(1 + 2) * (3 + 4)", "(1 + 2) * (3 + 4)"),
            ("2 ^ (3 ^ 2)", "2 ^ 3 ^ 2"),
            ("(2 ^ 3) ^ 2", "(2 ^ 3) ^ 2"),
            ("(1 > 2) == (3 < 4)", "1 > 2 == (3 < 4)"),
        ] {
            assert_eq!(parse(q).unwrap().to_string(), printed, "{q}");
        }
        let chain = "1".to_string() + &"-1".repeat(200);
        assert!(parse(&parse(&chain).unwrap().to_string()).is_ok(), "a long chain prints within the nesting limit");
    }

    #[test]
    fn long_chains_are_measured_and_dropped_on_a_worker_stack() {
        // Binary chains and `and` chains parse into trees as deep as they are long; measuring and
        // dropping one as long as the largest query text allowed must fit a runtime worker's stack.
        let run = |q: String| {
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || parse(&q).map(|e| shape(&e)))
                .unwrap()
                .join()
                .unwrap()
        };
        let chain = "1".to_string() + &" + 1".repeat(64 * 1024 / 4);
        assert!(run(chain).unwrap().depth > 16_000);
        let labels = r#"{a="b"} | x="1""#.to_string() + &r#" and x="1""#.repeat(64 * 1024 / 10);
        let s = run(labels).unwrap();
        assert!(s.clauses > 6000 && s.depth > 6000, "{s:?}");
    }
}
