//! Number formatting shared by the pages.

/// Nanoseconds as `1.23s`, `45.6ms`, `789µs`, `12ns`.
pub(crate) fn duration_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.*}s", if ns >= 1e10 { 1 } else { 2 }, ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.*}ms", if ns >= 1e7 { 1 } else { 2 }, ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.*}µs", if ns >= 1e4 { 1 } else { 2 }, ns / 1e3)
    } else {
        format!("{:.0}ns", ns)
    }
}

/// A bucket width as `30s`, `5m`, `1h`, `1d` (whole units), else as [`duration_ns`].
pub(crate) fn step(ns: u64) -> String {
    const S: u64 = 1_000_000_000;
    for (unit, suffix) in [(86_400 * S, "d"), (3_600 * S, "h"), (60 * S, "m"), (S, "s")] {
        if ns >= unit && ns.is_multiple_of(unit) {
            return format!("{}{suffix}", ns / unit);
        }
    }
    duration_ns(ns as f64)
}

/// Events per second as `12.3/s`, or per minute when below one a second.
pub(crate) fn rate(per_s: f64) -> String {
    if per_s >= 100.0 {
        format!("{per_s:.0}/s")
    } else if per_s >= 1.0 {
        format!("{per_s:.1}/s")
    } else if per_s > 0.0 {
        format!("{:.1}/min", per_s * 60.0)
    } else {
        "0".into()
    }
}

/// A fraction as a percentage: `0.5%`, `12%`.
pub(crate) fn percent(f: f64) -> String {
    let p = f * 100.0;
    if p == 0.0 {
        "0%".into()
    } else if p < 10.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

/// A count with thousands separators: `12,345`.
pub(crate) fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(duration_ns(1_234_000_000.0), "1.23s");
        assert_eq!(duration_ns(45_600_000.0), "45.6ms");
        assert_eq!(duration_ns(789_000.0), "789.0µs");
        assert_eq!(duration_ns(12.0), "12ns");
        assert_eq!(rate(12.34), "12.3/s");
        assert_eq!(rate(0.5), "30.0/min");
        assert_eq!(rate(0.0), "0");
        assert_eq!(percent(0.005), "0.5%");
        assert_eq!(percent(0.25), "25%");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(step(30_000_000_000), "30s");
        assert_eq!(step(300_000_000_000), "5m");
        assert_eq!(step(7 * 86_400_000_000_000), "7d");
    }
}
