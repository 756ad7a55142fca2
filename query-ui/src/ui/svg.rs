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
}
