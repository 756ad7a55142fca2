//! Error-budget maths: pure functions over per-bucket (good, total) counts, one bucket = one
//! minute of SLO time. No I/O, no clocks: the engine passes bucket indexes in.
//!
//! Every quantity is a ratio of sums over a bucket range, never an average of per-bucket
//! ratios. The budgeting methods share one shape, a [`Tally`] of `good` over `total`:
//! - occurrences: good events over all events;
//! - time slices: good slices over slices with events (a slice of `k` buckets is good when its
//!   good/total is at least the slice target);
//! - ratio time slices: the sum of the slices' good/total ratios over the number of slices with
//!   events (so the SLI is the mean slice ratio).
//!
//! Slices are aligned to multiples of `k` in absolute bucket index, so they do not move between
//! evaluations; a range holds the slices that *start* inside it, each counted up to its end or
//! the end of the data (the newest slice is still filling). That keeps tallies additive:
//! `tally(a..c) = tally(a..b) + tally(b..c)`.

use std::ops::Range;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};

use crate::SloError;
use crate::model::{Budgeting, CalendarUnit, Window};

/// Nanoseconds in one minute of SLO time (one bucket at time scale 1).
const MINUTE_NS: u64 = 60_000_000_000;

/// Demo time compression: every SLO duration is divided by `factor` in real time. A bucket is
/// `60 s / factor` of real time and bucket `i` covers real time `[i, i + 1) × bucket`; that is
/// also minute `i` of a virtual SLO clock that runs `factor` times faster than real time
/// (Unix time × factor), on which calendar windows are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scale {
    factor: u32,
}

impl Scale {
    /// A scale; `factor` must divide 60 (checked by `SloConfig::validate`).
    pub fn new(factor: u32) -> Scale {
        Scale { factor: factor.clamp(1, 60) }
    }

    /// The compression factor.
    pub fn factor(self) -> u32 {
        self.factor
    }

    /// Length of a bucket in real nanoseconds.
    pub fn bucket_ns(self) -> u64 {
        MINUTE_NS / u64::from(self.factor)
    }

    /// The bucket holding real time `real_ns` (Unix nanoseconds).
    pub fn bucket_of(self, real_ns: u64) -> i64 {
        (real_ns / self.bucket_ns()) as i64
    }

    /// Real Unix nanoseconds at which bucket `b` starts.
    pub fn bucket_start_ns(self, b: i64) -> u64 {
        (b.max(0) as u64).saturating_mul(self.bucket_ns())
    }

    /// Real Unix milliseconds at which bucket `b` starts.
    pub fn bucket_start_ms(self, b: i64) -> i64 {
        (self.bucket_start_ns(b) / 1_000_000) as i64
    }

    /// Number of buckets in an SLO-time duration, rounded to the nearest bucket, at least 1.
    pub fn buckets(d: Duration) -> i64 {
        ((d.as_secs_f64() / 60.0).round() as i64).max(1)
    }

    /// An SLO-time duration as real time.
    pub fn real(self, d: Duration) -> Duration {
        d / self.factor
    }

    /// Seconds of the virtual SLO clock at real time `real_ns`.
    pub fn virtual_s(self, real_ns: u64) -> i64 {
        (u128::from(real_ns) * u128::from(self.factor) / 1_000_000_000) as i64
    }
}

/// How tallies are taken, derived from [`Budgeting`] with slice lengths in buckets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// Events.
    Occurrences,
    /// Good slices of `k` buckets (good when good/total >= `target`).
    Timeslices {
        /// Slice length in buckets.
        k: i64,
        /// Slice target.
        target: f64,
    },
    /// Mean slice ratio over slices of `k` buckets.
    RatioTimeslices {
        /// Slice length in buckets.
        k: i64,
    },
}

impl Method {
    /// The method of a budgeting.
    pub fn of(b: &Budgeting) -> Method {
        match b {
            Budgeting::Occurrences => Method::Occurrences,
            Budgeting::Timeslices { slice, slice_target } => {
                Method::Timeslices { k: Scale::buckets(*slice), target: *slice_target }
            }
            Budgeting::RatioTimeslices { slice } => Method::RatioTimeslices { k: Scale::buckets(*slice) },
        }
    }

    /// Slice length in buckets (1 for occurrences).
    pub fn slice_buckets(self) -> i64 {
        match self {
            Method::Occurrences => 1,
            Method::Timeslices { k, .. } | Method::RatioTimeslices { k } => k,
        }
    }
}

/// Good over total: events for occurrences, slices for time slices (for ratio time slices
/// `good` is the sum of slice ratios).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tally {
    /// Good events or slices.
    pub good: f64,
    /// All events, or slices with events.
    pub total: f64,
}

impl Tally {
    /// The SLI, `None` without events.
    pub fn sli(self) -> Option<f64> {
        (self.total > 0.0).then(|| self.good / self.total)
    }

    /// Bad events or slices.
    pub fn bad(self) -> f64 {
        (self.total - self.good).max(0.0)
    }

    /// Burn rate: the bad fraction over the allowed bad fraction `1 - target`. `None` without
    /// events. 1.0 spends the budget exactly over the window.
    pub fn burn_rate(self, target: f64) -> Option<f64> {
        self.sli().map(|sli| (1.0 - sli) / (1.0 - target))
    }

    /// The error budget of these events.
    pub fn budget(self, target: f64) -> Budget {
        let allowed = (1.0 - target) * self.total;
        let bad = self.bad();
        Budget {
            allowed_bad: allowed,
            bad,
            remaining: allowed - bad,
            remaining_ratio: (self.total > 0.0).then(|| 1.0 - bad / allowed),
        }
    }

    fn add(&mut self, o: Tally) {
        self.good += o.good;
        self.total += o.total;
    }
}

/// An error budget in events (or slices).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    /// Bad events the objective allows so far: `(1 - target) × total`.
    pub allowed_bad: f64,
    /// Bad events so far.
    pub bad: f64,
    /// `allowed_bad - bad` (negative when overspent).
    pub remaining: f64,
    /// `1 - bad / allowed_bad` (1: untouched, 0: spent, negative: overspent); `None` without
    /// events.
    pub remaining_ratio: Option<f64>,
}

/// Per-bucket counts over a contiguous range of bucket indexes, as prefix sums (every range sum
/// is O(1)).
#[derive(Clone, Debug)]
pub struct Buckets {
    first: i64,
    good: Vec<u64>,
    total: Vec<u64>,
}

impl Buckets {
    /// Counts for buckets `first, first + 1, ...`: `(good, total)` each. `good` is clamped to
    /// `total`.
    pub fn new(first: i64, counts: impl IntoIterator<Item = (u64, u64)>) -> Buckets {
        let mut good = vec![0];
        let mut total = vec![0];
        let (mut g, mut t) = (0u64, 0u64);
        for (bg, bt) in counts {
            g += bg.min(bt);
            t += bt;
            good.push(g);
            total.push(t);
        }
        Buckets { first, good, total }
    }

    /// One past the last bucket index.
    pub fn end(&self) -> i64 {
        self.first + self.good.len() as i64 - 1
    }

    fn idx(&self, b: i64) -> usize {
        (b.clamp(self.first, self.end()) - self.first) as usize
    }

    /// Sums of (good, total) over the buckets of `range` (clamped to the data).
    pub fn sum(&self, range: Range<i64>) -> (u64, u64) {
        let (a, b) = (self.idx(range.start), self.idx(range.end));
        if b <= a {
            return (0, 0);
        }
        (self.good[b] - self.good[a], self.total[b] - self.total[a])
    }

    /// The tally of `range` under `method` (see the module documentation for slices).
    pub fn tally(&self, method: Method, range: Range<i64>) -> Tally {
        match method {
            Method::Occurrences => {
                let (g, t) = self.sum(range);
                Tally { good: g as f64, total: t as f64 }
            }
            Method::Timeslices { k, target } => self.slices(k, range, |g, t| if g >= target * t { 1.0 } else { 0.0 }),
            Method::RatioTimeslices { k } => self.slices(k, range, |g, t| g / t),
        }
    }

    fn slices(&self, k: i64, range: Range<i64>, score: impl Fn(f64, f64) -> f64) -> Tally {
        let k = k.max(1);
        let mut out = Tally::default();
        let mut s = range.start.div_euclid(k) * k;
        if s < range.start {
            s += k;
        }
        while s < range.end {
            let (g, t) = self.sum(s..s + k);
            if t > 0 {
                out.add(Tally { good: score(g as f64, t as f64), total: 1.0 });
            }
            s += k;
        }
        out
    }

    /// Budget burn-down over `window`: at up to `max_points` evenly spaced bucket boundaries
    /// `e` (the last one `window.end`), the fraction of the window's whole budget left after the
    /// bad events of `window.start..e`: `1 - bad(start..e) / allowed(window)`. Starts near 1
    /// and ends at the window's remaining ratio. Empty without events.
    pub fn burn_down(&self, method: Method, target: f64, window: Range<i64>, max_points: usize) -> Vec<(i64, f64)> {
        let allowed = self.tally(method, window.clone()).budget(target).allowed_bad;
        if allowed <= 0.0 {
            return Vec::new();
        }
        let mut acc = Tally::default();
        steps(window, max_points)
            .map(|r| {
                acc.add(self.tally(method, r.clone()));
                (r.end, 1.0 - acc.bad() / allowed)
            })
            .collect()
    }

    /// The SLI over `window` in up to `max_points` consecutive steps: (step end, SLI of the step)
    /// for the steps with events.
    pub fn sli_series(&self, method: Method, window: Range<i64>, max_points: usize) -> Vec<(i64, f64)> {
        steps(window, max_points).filter_map(|r| self.tally(method, r.clone()).sli().map(|s| (r.end, s))).collect()
    }
}

/// `window` cut into at most `max_points` consecutive ranges of equal length (the last may be
/// shorter). A slice belongs to the step it starts in (tallies are additive), so steps need not
/// be aligned to slices.
fn steps(window: Range<i64>, max_points: usize) -> impl Iterator<Item = Range<i64>> {
    let len = (window.end - window.start).max(0);
    let step = ((len + max_points.max(1) as i64 - 1) / max_points.max(1) as i64).max(1);
    let start = window.start;
    (0..(len + step - 1) / step).map(move |i| {
        let a = start + i * step;
        a..(a + step).min(window.end)
    })
}

/// Time until the budget is spent at burn rate `burn`: `remaining_ratio × window / burn`
/// (`None` when nothing burns; zero when already spent).
pub fn time_to_exhaustion(remaining_ratio: f64, burn: f64, window: Duration) -> Option<Duration> {
    if burn <= 0.0 || !burn.is_finite() {
        return None;
    }
    if remaining_ratio <= 0.0 {
        return Some(Duration::ZERO);
    }
    Duration::try_from_secs_f64(remaining_ratio * window.as_secs_f64() / burn).ok()
}

/// A lookback of `d` (SLO time) ending in the current bucket `now`: the newest `d / 1 min`
/// complete buckets and the current, still filling one. Never empty just after a bucket boundary
/// (a window of whole buckets ending in the current one would be, for one-bucket windows).
pub fn lookback(now: i64, d: Duration) -> Range<i64> {
    now - Scale::buckets(d)..now + 1
}

/// The current window at bucket `now` (inclusive) as a bucket range `start..now + 1`, and its
/// length in SLO time. Rolling: a [`lookback`] of the window. Calendar: from the start of
/// the current period on the virtual SLO clock (`now_virtual_s`) to now; the length is the
/// whole period's.
pub fn window_range(window: &Window, now: i64, now_virtual_s: i64) -> Result<(Range<i64>, Duration), SloError> {
    match window {
        Window::Rolling(d) => Ok((lookback(now, *d), *d)),
        Window::Calendar { count, unit, time_zone, start_unix_s } => {
            let (start, end) = calendar_period(*count, *unit, time_zone, *start_unix_s, now_virtual_s)?;
            let len = Duration::from_secs((end - start).max(0) as u64);
            Ok((start.div_euclid(60).min(now)..now + 1, len))
        }
    }
}

/// The calendar period `[start, end)` (Unix seconds) that holds `now_s`: periods of `count`
/// units in `time_zone`, aligned to `start_unix_s`. Month arithmetic adds whole months to the
/// alignment instant (so a period starting on the 31st starts on the last day of shorter
/// months); days are calendar days (23 or 25 hours across DST changes).
pub fn calendar_period(
    count: u32,
    unit: CalendarUnit,
    time_zone: &str,
    start_unix_s: i64,
    now_s: i64,
) -> Result<(i64, i64), SloError> {
    let bad = |reason: String| SloError::InvalidConfig { key: "calendar window", reason };
    let tz = TimeZone::get(time_zone).map_err(|e| bad(format!("time zone {time_zone:?}: {e}")))?;
    let origin = Timestamp::from_second(start_unix_s).map_err(|e| bad(e.to_string()))?.to_zoned(tz);
    let count = i64::from(count.max(1));
    let nth = |k: i64| -> Result<i64, SloError> {
        let n = k * count;
        let span = match unit {
            CalendarUnit::Day => Span::new().try_days(n),
            CalendarUnit::Week => Span::new().try_weeks(n),
            CalendarUnit::Month => Span::new().try_months(n),
            CalendarUnit::Quarter => Span::new().try_months(3 * n),
            CalendarUnit::Year => Span::new().try_years(n),
        }
        .map_err(|e| bad(e.to_string()))?;
        let z: Zoned = origin.checked_add(span).map_err(|e| bad(e.to_string()))?;
        Ok(z.timestamp().as_second())
    };
    let nominal = Window::Calendar { count: count as u32, unit, time_zone: String::new(), start_unix_s }.nominal();
    let mut k = (now_s - start_unix_s).div_euclid(nominal.as_secs().max(1) as i64);
    while nth(k)? > now_s {
        k -= 1;
    }
    while nth(k + 1)? <= now_s {
        k += 1;
    }
    Ok((nth(k)?, nth(k + 1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 60;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    /// `n` buckets with `per` events each, `bad_at(i)` of them bad.
    fn traffic(n: i64, per: u64, bad_at: impl Fn(i64) -> u64) -> Buckets {
        Buckets::new(0, (0..n).map(|i| (per - bad_at(i), per)))
    }

    #[test]
    fn sli_is_a_ratio_of_sums_not_an_average_of_ratios() {
        // 1 of 1 good, then 0 of 99: the mean of ratios would be 0.5, the ratio of sums 0.01.
        let b = Buckets::new(10, [(1, 1), (0, 99)]);
        assert_eq!(b.tally(Method::Occurrences, 10..12).sli(), Some(0.01));
        assert_eq!(b.sum(0..100), (1, 100), "ranges are clamped to the data");
        assert_eq!(b.tally(Method::Occurrences, 12..20).sli(), None, "no events, no SLI");
    }

    #[test]
    fn workbook_burn_rates_spend_the_documented_share_of_a_30_day_budget() {
        // The SRE Workbook's table for 99.9% over 30 days: burn rate, long window, share of the
        // budget spent when that burn lasts the long window.
        let target = 0.999;
        let window = 30 * DAY;
        for (burn, long_min, share) in [(14.4, 60, 0.02), (6.0, 6 * 60, 0.05), (3.0, DAY, 0.10), (1.0, 3 * DAY, 0.10)] {
            // 1000 events a minute; the last `long_min` minutes at `burn` × 0.1% errors.
            let per = 100_000u64;
            let bad = (burn * 0.001 * per as f64).round() as u64;
            let b = traffic(window, per, |i| if i >= window - long_min { bad } else { 0 });
            let long = b.tally(Method::Occurrences, window - long_min..window);
            assert!(close(long.burn_rate(target).unwrap(), burn), "burn {burn}");
            let spent = 1.0 - b.tally(Method::Occurrences, 0..window).budget(target).remaining_ratio.unwrap();
            assert!(close(spent, share), "burn {burn} over {long_min} min spends {spent}, want {share}");
        }
    }

    #[test]
    fn a_full_outage_exhausts_a_999_30_day_budget_in_43_minutes() {
        let b = traffic(60, 10, |_| 10);
        let burn = b.tally(Method::Occurrences, 0..60).burn_rate(0.999).unwrap();
        assert!(close(burn, 1000.0));
        let t = time_to_exhaustion(1.0, burn, Duration::from_secs(30 * 24 * 3600)).unwrap();
        assert_eq!(t, Duration::from_secs(43 * 60 + 12));
        // Half the budget left at 14.4x: 0.5 × 30 d / 14.4 = 25 h.
        assert_eq!(
            time_to_exhaustion(0.5, 14.4, Duration::from_secs(30 * 86400)),
            Some(Duration::from_secs(25 * 3600))
        );
        assert_eq!(time_to_exhaustion(-0.1, 2.0, Duration::from_secs(60)), Some(Duration::ZERO));
        assert_eq!(time_to_exhaustion(0.5, 0.0, Duration::from_secs(60)), None);
    }

    #[test]
    fn budget_in_events() {
        // 99% of 10,000 events allows 100 bad; 30 bad leave 70 (70%).
        let t = Tally { good: 9970.0, total: 10_000.0 };
        let b = t.budget(0.99);
        assert!(close(b.allowed_bad, 100.0) && close(b.bad, 30.0) && close(b.remaining, 70.0));
        assert!(close(b.remaining_ratio.unwrap(), 0.7));
        // Overspent: 250 bad of 10,000 at 99% leaves -150 events, -150%.
        let b = Tally { good: 9750.0, total: 10_000.0 }.budget(0.99);
        assert!(close(b.remaining, -150.0) && close(b.remaining_ratio.unwrap(), -1.5));
        assert_eq!(Tally::default().budget(0.99).remaining_ratio, None);
    }

    #[test]
    fn timeslices_count_good_slices_and_leave_out_empty_ones() {
        // 5-minute slices, a slice is good at >= 95%. Slices: [0,5) 100% good, [5,10) empty,
        // [10,15) 90% good (bad), [15,17) still filling, 96% good.
        let mut counts = vec![(10, 10); 5];
        counts.extend(vec![(0, 0); 5]);
        counts.extend(vec![(9, 10); 5]);
        counts.extend([(48, 50), (48, 50)]);
        let b = Buckets::new(0, counts);
        let m = Method::Timeslices { k: 5, target: 0.95 };
        let t = b.tally(m, 0..17);
        assert_eq!((t.good, t.total), (2.0, 3.0));
        // Slices are aligned to absolute indexes: a range from bucket 3 holds those starting at
        // 5, 10 and 15 only, and tallies add up.
        let t3 = b.tally(m, 3..17);
        assert_eq!((t3.good, t3.total), (1.0, 2.0));
        let (x, y) = (b.tally(m, 0..12), b.tally(m, 12..17));
        assert_eq!((x.good + y.good, x.total + y.total), (t.good, t.total));
        // Burn: 1/3 bad slices against 1% allowed.
        assert!(close(t.burn_rate(0.99).unwrap(), (1.0 / 3.0) / 0.01));
    }

    #[test]
    fn ratio_timeslices_average_the_slice_ratios() {
        // Slice 1: 100 events, 50 good (0.5); slice 2: 1 event, good (1.0). Mean 0.75, while
        // occurrences would give 51/101.
        let b = Buckets::new(0, [(50, 100), (0, 0), (1, 1), (0, 0)]);
        let t = b.tally(Method::RatioTimeslices { k: 2 }, 0..4);
        assert_eq!(t.sli(), Some(0.75));
        assert!(close(t.burn_rate(0.9).unwrap(), 2.5));
        assert!(close(b.tally(Method::Occurrences, 0..4).sli().unwrap(), 51.0 / 101.0));
    }

    #[test]
    fn burn_down_goes_from_full_to_the_windows_remaining_budget() {
        // 4 buckets of 1000 events at 99.9% (allowed 4 bad); 1 bad in bucket 1, 2 in bucket 3.
        let b = Buckets::new(0, [(1000, 1000), (999, 1000), (1000, 1000), (998, 1000)]);
        let got = b.burn_down(Method::Occurrences, 0.999, 0..4, 500);
        let want = [(1, 1.0), (2, 0.75), (3, 0.75), (4, 0.25)];
        assert_eq!(got.len(), 4);
        for ((t, v), (wt, wv)) in got.iter().zip(want) {
            assert!(*t == wt && close(*v, wv), "{got:?}");
        }
        // Downsampled: 2 points of 2 buckets.
        let got = b.burn_down(Method::Occurrences, 0.999, 0..4, 2);
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), vec![2, 4]);
        let series = b.sli_series(Method::Occurrences, 0..4, 2);
        assert_eq!(series, vec![(2, 0.9995), (4, 0.999)]);
        assert!(traffic(4, 0, |_| 0).burn_down(Method::Occurrences, 0.9, 0..4, 10).is_empty());
    }

    #[test]
    fn steps_cover_the_window_without_overlap() {
        let r: Vec<_> = steps(0..43_200, 500).collect();
        assert!(r.len() <= 500);
        assert_eq!(r[0].start, 0);
        assert_eq!(r.last().unwrap().end, 43_200);
        assert!(r.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(steps(5..5, 10).count(), 0);
    }

    #[test]
    fn scale_maps_slo_minutes_to_real_buckets() {
        let s = Scale::new(60);
        assert_eq!(s.bucket_ns(), 1_000_000_000);
        assert_eq!(s.bucket_of(61_500_000_000), 61);
        assert_eq!(s.real(Duration::from_secs(3600)), Duration::from_secs(60));
        assert_eq!(Scale::buckets(Duration::from_secs(3600)), 60);
        assert_eq!(Scale::buckets(Duration::from_secs(70)), 1);
        assert_eq!(Scale::buckets(Duration::from_secs(10)), 1, "at least one bucket");
        // Bucket i of real time is minute i of the virtual SLO clock.
        let now_ns = 1_700_000_000_123_000_000u64;
        assert_eq!(s.virtual_s(now_ns).div_euclid(60), s.bucket_of(now_ns));
        assert_eq!(Scale::new(1).bucket_of(now_ns), (now_ns / 1_000_000_000 / 60) as i64);
    }

    fn unix(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    #[test]
    fn calendar_months_follow_the_time_zone() {
        // Monthly periods in Berlin aligned to 2024-01-01 00:00 local (23:00 UTC the day before).
        let origin = unix("2023-12-31T23:00:00Z");
        let (s, e) =
            calendar_period(1, CalendarUnit::Month, "Europe/Berlin", origin, unix("2024-03-15T12:00:00Z")).unwrap();
        assert_eq!((s, e), (unix("2024-02-29T23:00:00Z"), unix("2024-03-31T22:00:00Z")), "DST starts in March");
        // Before the origin, periods go backwards.
        let (s, _) =
            calendar_period(1, CalendarUnit::Month, "Europe/Berlin", origin, unix("2023-11-10T00:00:00Z")).unwrap();
        assert_eq!(s, unix("2023-10-31T23:00:00Z"));
        // At the boundary the new period starts.
        let (s, _) = calendar_period(1, CalendarUnit::Month, "UTC", 0, unix("2024-02-01T00:00:00Z")).unwrap();
        assert_eq!(s, unix("2024-02-01T00:00:00Z"));
    }

    #[test]
    fn calendar_weeks_quarters_years_and_bad_zones() {
        // Weeks aligned to Monday 2024-01-01 UTC.
        let monday = unix("2024-01-01T00:00:00Z");
        let (s, e) = calendar_period(1, CalendarUnit::Week, "UTC", monday, unix("2024-01-10T05:00:00Z")).unwrap();
        assert_eq!((s, e), (unix("2024-01-08T00:00:00Z"), unix("2024-01-15T00:00:00Z")));
        let (s, e) = calendar_period(1, CalendarUnit::Quarter, "UTC", monday, unix("2024-05-20T00:00:00Z")).unwrap();
        assert_eq!((s, e), (unix("2024-04-01T00:00:00Z"), unix("2024-07-01T00:00:00Z")));
        let (s, _) = calendar_period(1, CalendarUnit::Year, "UTC", monday, unix("2025-12-31T23:59:59Z")).unwrap();
        assert_eq!(s, unix("2025-01-01T00:00:00Z"));
        let (s, e) = calendar_period(2, CalendarUnit::Day, "UTC", monday, unix("2024-01-04T10:00:00Z")).unwrap();
        assert_eq!((s, e), (unix("2024-01-03T00:00:00Z"), unix("2024-01-05T00:00:00Z")));
        let err = calendar_period(1, CalendarUnit::Day, "Mars/Olympus", 0, 0).unwrap_err().to_string();
        assert!(err.contains("Mars/Olympus"), "{err}");
    }

    #[test]
    fn window_ranges() {
        let (r, len) = window_range(&Window::Rolling(Duration::from_secs(7 * 86400)), 100_000, 0).unwrap();
        assert_eq!(r, 100_000 - 7 * DAY..100_001, "7 days of complete buckets and the current one");
        assert_eq!(len, Duration::from_secs(7 * 86400));
        // The 7-day page tier's 70 s short window: the previous minute and the current one.
        assert_eq!(lookback(500, Duration::from_secs(70)), 499..501);
        let w = Window::Calendar { count: 1, unit: CalendarUnit::Day, time_zone: "UTC".into(), start_unix_s: 0 };
        let now_s = unix("2024-01-01T10:30:10Z");
        let (r, len) = window_range(&w, now_s / 60, now_s).unwrap();
        assert_eq!(r, unix("2024-01-01T00:00:00Z") / 60..now_s / 60 + 1);
        assert_eq!(len, Duration::from_secs(86400));
        // At time scale 60 the virtual clock is far ahead (year ~5400), still in jiff's range.
        let scale = Scale::new(60);
        let real_ns = 1_800_000_000_000_000_000u64;
        let month = Window::Calendar {
            count: 1,
            unit: CalendarUnit::Month,
            time_zone: "America/New_York".into(),
            start_unix_s: 0,
        };
        let now = scale.bucket_of(real_ns);
        let (r, len) = window_range(&month, now, scale.virtual_s(real_ns)).unwrap();
        assert!(r.end == now + 1 && now - r.start < 31 * DAY, "{r:?}");
        assert!(len >= Duration::from_secs(28 * 86400) && len <= Duration::from_secs(31 * 86400 + 3600));
    }
}
