//! Small server-side SVG pieces built in Rust: sparklines. Only numbers and text passed
//! through [`esc`] go into the markup, so the result is safe to emit unescaped ([`Svg`] is
//! [`askama::filters::HtmlSafe`]). Charts with links and labels are askama templates instead.

use std::fmt::{self, Write};

/// Markup built by this module.
#[derive(Clone, Debug, Default)]
pub(crate) struct Svg(String);

impl fmt::Display for Svg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl askama::filters::HtmlSafe for Svg {}

/// `s` escaped for SVG/HTML text and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Sparkline width and height in pixels.
const W: f64 = 120.0;
const H: f64 = 22.0;

/// A sparkline of `values` (one per equal time step; `None` where there is no data), scaled to
/// its own maximum, with `title` as the hover text. `error` selects the red style.
pub(crate) fn sparkline(values: &[Option<f64>], title: &str, error: bool) -> Svg {
    let max = values.iter().flatten().copied().fold(0.0_f64, f64::max);
    let cls = if error { " err" } else { "" };
    let mut s = format!(
        "<svg class=\"spark\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\"><title>{}</title>",
        esc(title)
    );
    if values.len() >= 2 && max > 0.0 {
        let step = W / (values.len() - 1) as f64;
        let y = |v: f64| (H - 1.0) - (v / max) * (H - 2.0);
        let mut line = String::new();
        for (i, v) in values.iter().enumerate() {
            let _ = write!(line, "{:.1},{:.1} ", i as f64 * step, y(v.unwrap_or(0.0)));
        }
        let line = line.trim_end();
        let _ = write!(s, "<polygon class=\"area{cls}\" points=\"0,{H} {line} {W},{H}\"/>");
        let _ = write!(s, "<polyline class=\"line{cls}\" points=\"{line}\"/>");
    } else {
        let _ = write!(s, "<line class=\"line{cls}\" x1=\"0\" y1=\"{0}\" x2=\"{W}\" y2=\"{0}\"/>", H - 1.0);
    }
    s.push_str("</svg>");
    Svg(s)
}

/// A horizontal reference line of a [`line_chart`].
pub(crate) struct Rule {
    /// Where, in the chart's value unit.
    pub value: f64,
    /// Its label, drawn at the right end.
    pub label: String,
}

/// A time-series line chart: `points` are (Unix ms, value) oldest first, `None` a gap; the y
/// axis spans `y_range` (widened to hold every point and rule); `fmt_value` labels the y axis;
/// `rules` are dashed reference lines (thresholds, targets). Drawn in a 720×180 viewBox that
/// scales with its container (text keeps its proportions).
pub(crate) fn line_chart(
    points: &[(i64, Option<f64>)],
    y_range: (f64, f64),
    rules: &[Rule],
    fmt_value: &dyn Fn(f64) -> String,
    title: &str,
) -> Svg {
    const CW: f64 = 720.0;
    const CH: f64 = 180.0;
    const LEFT: f64 = 64.0;
    const RIGHT: f64 = 96.0;
    const TOP: f64 = 8.0;
    const BOTTOM: f64 = 22.0;
    let (mut lo, mut hi) = y_range;
    for v in points.iter().filter_map(|p| p.1).chain(rules.iter().map(|r| r.value)) {
        if v.is_finite() {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        hi = lo + 1.0;
    }
    let (t0, t1) = match (points.first(), points.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => (a.0, b.0),
        (Some(a), _) => (a.0 - 1, a.0 + 1),
        _ => (0, 1),
    };
    let x = |t: i64| LEFT + (t - t0) as f64 / (t1 - t0) as f64 * (CW - LEFT - RIGHT);
    let y = |v: f64| TOP + (hi - v.clamp(lo, hi)) / (hi - lo) * (CH - TOP - BOTTOM);
    let mut s = format!("<svg class=\"chart\" viewBox=\"0 0 {CW} {CH}\" role=\"img\"><title>{}</title>", esc(title));
    for v in [lo, (lo + hi) / 2.0, hi] {
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{x2:.1}\" y1=\"{yv:.1}\" y2=\"{yv:.1}\"/><text class=\"ylab\" x=\"{lx:.1}\" y=\"{ly:.1}\">{label}</text>",
            x2 = CW - RIGHT,
            lx = LEFT - 6.0,
            yv = y(v),
            ly = y(v) + 4.0,
            label = esc(&fmt_value(v))
        );
    }
    for (t, anchor) in [(t0, "start"), (t1, "end")] {
        let _ = write!(
            s,
            "<text class=\"xlab\" text-anchor=\"{anchor}\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            x(t),
            CH - 6.0,
            esc(&utc_minute(t))
        );
    }
    for r in rules {
        let _ = write!(
            s,
            "<line class=\"rule\" x1=\"{LEFT}\" x2=\"{x2:.1}\" y1=\"{yv:.1}\" y2=\"{yv:.1}\"/><text class=\"rulelab\" x=\"{lx:.1}\" y=\"{ly:.1}\">{label}</text>",
            x2 = CW - RIGHT,
            lx = CW - RIGHT + 4.0,
            yv = y(r.value),
            ly = y(r.value) + 4.0,
            label = esc(&r.label)
        );
    }
    // One polyline per run of points without gaps.
    let mut run = String::new();
    let flush = |run: &mut String, s: &mut String| {
        if run.trim_end().contains(' ') {
            let _ = write!(s, "<polyline class=\"series\" points=\"{}\"/>", run.trim_end());
        } else if let Some((px, py)) = run.trim_end().split_once(',') {
            let _ = write!(s, "<circle class=\"dot\" cx=\"{px}\" cy=\"{py}\" r=\"2\"/>");
        }
        run.clear();
    };
    for (t, v) in points {
        match v.filter(|v| v.is_finite()) {
            Some(v) => {
                let _ = write!(run, "{:.1},{:.1} ", x(*t), y(v));
            }
            None => flush(&mut run, &mut s),
        }
    }
    flush(&mut run, &mut s);
    s.push_str("</svg>");
    Svg(s)
}

/// `YYYY-MM-DD HH:MM` (UTC) of a Unix millisecond time.
pub(crate) fn utc_minute(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_their_maximum_and_escape_titles() {
        let s = sparkline(&[Some(0.0), Some(2.0), None, Some(4.0)], "<b>peak</b>", false).to_string();
        assert!(s.contains("<title>&lt;b&gt;peak&lt;/b&gt;</title>"), "{s}");
        assert!(s.contains("points=\"0.0,21.0 40.0,11.0 80.0,21.0 120.0,1.0\""), "{s}");
        let flat = sparkline(&[], "none", true).to_string();
        assert!(flat.contains("<line class=\"line err\""), "{flat}");
    }

    #[test]
    fn line_charts_break_at_gaps_draw_rules_and_escape_labels() {
        let pts = [(0, Some(1.0)), (1000, Some(0.5)), (2000, None), (3000, Some(0.0))];
        let rules = [Rule { value: 0.25, label: "<14.4x>".into() }];
        let s = line_chart(&pts, (0.0, 1.0), &rules, &|v| format!("{v:.2}"), "t").to_string();
        assert_eq!(s.matches("<polyline").count(), 1, "{s}");
        assert_eq!(s.matches("<circle").count(), 1, "the lone point after the gap: {s}");
        assert!(s.contains("&lt;14.4x&gt;"), "{s}");
        assert!(s.contains("1970-01-01 00:00"), "{s}");
    }

    #[test]
    fn utc_minutes_are_civil_dates() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00");
        assert_eq!(utc_minute(1_709_251_260_000), "2024-03-01 00:01");
        assert_eq!(utc_minute(951_782_400_000), "2000-02-29 00:00");
    }
}
