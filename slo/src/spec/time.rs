//! Durations and SLO windows: OpenSLO's `<count><unit>` window durations, humantime durations
//! for everything else, calendar start times in a named time zone.

use std::time::Duration;

use crate::model::{CalendarUnit, Window};

use super::yaml::{Cx, Field};
use crate::SloError;

const MINUTE: u64 = 60;
const DAY: u64 = 24 * 3600;
/// Longest SLO window: counts are kept per minute over the whole window.
pub(super) const MAX_WINDOW: Duration = Duration::from_secs(366 * DAY);

/// A duration such as `300ms`, `5m`, `1h 30m`, `2d` (humantime); must be positive.
pub(super) fn duration(cx: Cx<'_>, f: &Field<'_, '_>) -> Result<Duration, SloError> {
    let text = f.str(cx)?;
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| f.err(cx, format!("invalid duration {text:?}: {e} (write e.g. 300ms, 5m, 1h)")))?;
    if d.is_zero() {
        return Err(f.err(cx, "must be longer than zero"));
    }
    Ok(d)
}

/// `alertAfter`: like [`duration`] but zero is allowed.
pub(super) fn duration_or_zero(cx: Cx<'_>, f: &Field<'_, '_>) -> Result<Duration, SloError> {
    let text = f.str(cx)?;
    if text.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0" {
        return Ok(Duration::ZERO);
    }
    duration(cx, f)
}

/// A whole, positive number of minutes (`timeSliceWindow`).
pub(super) fn whole_minutes(cx: Cx<'_>, f: &Field<'_, '_>) -> Result<Duration, SloError> {
    let d = duration(cx, f)?;
    if d.subsec_nanos() != 0 || d.as_secs() % MINUTE != 0 {
        return Err(f.err(cx, format!("must be a whole number of minutes, got {}", humantime::format_duration(d))));
    }
    Ok(d)
}

/// OpenSLO's window duration `<count><unit>`, unit one of `m h d w M Q Y`.
fn window_duration(cx: Cx<'_>, f: &Field<'_, '_>) -> Result<(u32, char), SloError> {
    let text = f.str(cx)?.trim();
    let bad = || {
        f.err(cx, format!("invalid duration {text:?}: write <count><unit> with unit m, h, d, w, M, Q or Y (e.g. 28d)"))
    };
    let unit = text.chars().last().ok_or_else(bad)?;
    let count = &text[..text.len() - unit.len_utf8()];
    if !"mhdwMQY".contains(unit) || count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let count: u32 = count.parse().map_err(|_| bad())?;
    if count == 0 {
        return Err(f.err(cx, "must be longer than zero"));
    }
    Ok((count, unit))
}

/// `spec.timeWindow`: exactly one entry, rolling (`isRolling: true`, m/h/d/w) or calendar
/// (`isRolling: false`, `calendar.startTime` in `calendar.timeZone`, d/w/M/Q/Y).
pub(super) fn window(cx: Cx<'_>, f: &Field<'_, '_>) -> Result<Window, SloError> {
    let items = f.seq(cx)?;
    let [item] = items.as_slice() else {
        return Err(f.err(cx, format!("exactly one time window is required, found {}", items.len())));
    };
    let m = item.map(cx, &["duration", "isRolling", "calendar"])?;
    let dur = m.req(cx, "duration")?;
    let (count, unit) = window_duration(cx, dur)?;
    let rolling = match m.get("isRolling") {
        Some(r) => r.bool(cx)?,
        None => false,
    };
    let window = if rolling {
        if let Some(c) = m.get("calendar") {
            return Err(c.err(cx, "a rolling window has no calendar; set isRolling: false for a calendar window"));
        }
        let unit_s = match unit {
            'm' => MINUTE,
            'h' => 3600,
            'd' => DAY,
            'w' => 7 * DAY,
            _ => {
                return Err(dur.err(
                    cx,
                    format!("rolling windows are in m, h, d or w (e.g. 28d, 4w); for `{unit}` use a calendar window"),
                ));
            }
        };
        Window::Rolling(Duration::from_secs(u64::from(count) * unit_s))
    } else {
        let unit = match unit {
            'd' => CalendarUnit::Day,
            'w' => CalendarUnit::Week,
            'M' => CalendarUnit::Month,
            'Q' => CalendarUnit::Quarter,
            'Y' => CalendarUnit::Year,
            _ => {
                return Err(
                    dur.err(cx, "calendar windows are in d, w, M, Q or Y (e.g. 1M); for hours use isRolling: true")
                );
            }
        };
        let Some(cal) = m.get("calendar") else {
            return Err(m.err(
                cx,
                "a calendar window (isRolling: false) needs `calendar: {startTime, timeZone}`; \
                 for a rolling window set isRolling: true",
            ));
        };
        let c = cal.map(cx, &["startTime", "timeZone"])?;
        let tz_field = c.get("timeZone");
        let time_zone = match tz_field {
            Some(t) => t.str(cx)?.trim().to_owned(),
            None => "UTC".to_owned(),
        };
        let tz = jiff::tz::TimeZone::get(&time_zone).map_err(|_| match tz_field {
            Some(t) => t.err(cx, format!("unknown time zone {time_zone:?} (an IANA name such as UTC or Europe/Paris)")),
            None => c.err(cx, "cannot load the UTC time zone"),
        })?;
        let start_field = c.req(cx, "startTime")?;
        let start_text = start_field.str(cx)?.trim();
        let civil = jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", start_text).map_err(|_| {
            start_field.err(cx, format!("invalid start time {start_text:?}: write \"YYYY-MM-DD hh:mm:ss\""))
        })?;
        let start = civil
            .to_zoned(tz)
            .map_err(|e| start_field.err(cx, format!("start time {start_text:?} in {time_zone}: {e}")))?;
        Window::Calendar { count, unit, time_zone, start_unix_s: start.timestamp().as_second() }
    };
    if window.nominal() > MAX_WINDOW {
        return Err(dur.err(cx, "windows longer than a year are not supported"));
    }
    Ok(window)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use saphyr::{LoadableYamlNode, MarkedYaml};

    use super::*;

    fn window_of(yaml: &str) -> Result<Window, String> {
        let docs = MarkedYaml::load_from_str(yaml).unwrap();
        let root = Field::root(&docs[0]);
        let cx = Cx { file: Path::new("t.yaml") };
        let m = root.map(cx, &["timeWindow"]).map_err(|e| e.to_string())?;
        window(cx, m.req(cx, "timeWindow").map_err(|e| e.to_string())?).map_err(|e| e.to_string())
    }

    #[test]
    fn rolling_windows() {
        let day = |n| Window::Rolling(Duration::from_secs(n * DAY));
        assert_eq!(window_of("timeWindow: [{duration: 28d, isRolling: true}]").unwrap(), day(28));
        assert_eq!(window_of("timeWindow: [{duration: 4w, isRolling: true}]").unwrap(), day(28));
        assert_eq!(
            window_of("timeWindow: [{duration: 1h, isRolling: true}]").unwrap(),
            Window::Rolling(Duration::from_secs(3600))
        );
        let e = window_of("timeWindow: [{duration: 1M, isRolling: true}]").unwrap_err();
        assert!(e.contains("timeWindow[0].duration") && e.contains("calendar window"), "{e}");
        let e = window_of("timeWindow: [{duration: 2Y, isRolling: true}]").unwrap_err();
        assert!(e.contains("calendar window"), "{e}");
        let e = window_of("timeWindow: [{duration: 400d, isRolling: true}]").unwrap_err();
        assert!(e.contains("longer than a year"), "{e}");
        let e = window_of("timeWindow: [{duration: 28 days, isRolling: true}]").unwrap_err();
        assert!(e.contains("<count><unit>"), "{e}");
        let e = window_of("timeWindow: [{duration: 0d, isRolling: true}]").unwrap_err();
        assert!(e.contains("longer than zero"), "{e}");
        let e = window_of("timeWindow: []").unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
    }

    #[test]
    fn calendar_windows() {
        let w = window_of(
            "timeWindow:\n- duration: 1M\n  isRolling: false\n  calendar:\n    startTime: \"2024-01-01 00:00:00\"\n    timeZone: Europe/Paris\n",
        )
        .unwrap();
        assert_eq!(
            w,
            Window::Calendar {
                count: 1,
                unit: CalendarUnit::Month,
                time_zone: "Europe/Paris".into(),
                start_unix_s: 1_704_063_600
            }
        );
        let e = window_of(
            "timeWindow:\n- duration: 1M\n  isRolling: false\n  calendar:\n    startTime: \"2024-01-01 00:00:00\"\n    timeZone: Mars/Olympus\n",
        )
        .unwrap_err();
        assert!(e.starts_with("t.yaml:6: timeWindow[0].calendar.timeZone: unknown time zone"), "{e}");
        let e = window_of("timeWindow:\n- duration: 1M\n  isRolling: false\n").unwrap_err();
        assert!(e.contains("needs `calendar"), "{e}");
        let e = window_of("timeWindow:\n- duration: 1M\n  calendar: {startTime: 2024-01-01}\n").unwrap_err();
        assert!(e.contains("YYYY-MM-DD hh:mm:ss"), "{e}");
        let e =
            window_of("timeWindow:\n- duration: 2h\n  calendar: {startTime: \"2024-01-01 00:00:00\"}\n").unwrap_err();
        assert!(e.contains("calendar windows are in d, w, M, Q or Y"), "{e}");
    }
}
