//! Float native histograms for evaluation: sums, differences and quantiles of exponential
//! histograms, with the bucket layout of Prometheus (index `i` of schema `s` covers
//! `(2^((i-1)·2^-s), 2^(i·2^-s)]`).

use obsbox_storage::prometheus::NativeHistogram;

/// A native histogram with float counts, buckets as sorted `(index, count)` lists.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FloatHist {
    pub schema: i32,
    pub zero_threshold: f64,
    pub zero_count: f64,
    pub count: f64,
    pub sum: f64,
    pub positive: Vec<(i32, f64)>,
    pub negative: Vec<(i32, f64)>,
    /// The producer says counting restarted here.
    pub reset_hint: bool,
}

/// One bucket with its bounds, as the query API lists them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Bucket {
    pub lower: f64,
    pub upper: f64,
    /// Prometheus' boundary rule: 0 `(l,u]`, 1 `[l,u)`, 3 `[l,u]`.
    pub rule: u8,
    pub count: f64,
}

/// Upper bound of positive bucket `index` at `schema`.
pub(crate) fn bucket_bound(schema: i32, index: i32) -> f64 {
    if schema <= 0 {
        // Exact powers of two.
        2f64.powi(index << (-schema) as u32)
    } else {
        2f64.powf(f64::from(index) / f64::from(1u32 << schema as u32))
    }
}

fn to_schema_buckets(buckets: &[(i32, f64)], from: i32, to: i32) -> Vec<(i32, f64)> {
    if to >= from {
        return buckets.to_vec();
    }
    let shift = (from - to) as u32;
    let mut out: Vec<(i32, f64)> = Vec::with_capacity(buckets.len());
    for &(i, c) in buckets {
        let j = ((i - 1) >> shift) + 1;
        match out.last_mut() {
            Some((k, n)) if *k == j => *n += c,
            _ => out.push((j, c)),
        }
    }
    out
}

fn merge(a: &[(i32, f64)], b: &[(i32, f64)], sign: f64) -> Vec<(i32, f64)> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                out.push((x.0, x.1 + sign * y.1));
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                out.push(*x);
                i += 1;
            }
            (Some(x), None) => {
                out.push(*x);
                i += 1;
            }
            (_, Some(y)) => {
                out.push((y.0, sign * y.1));
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

impl FloatHist {
    /// From the storage view's integer histogram.
    pub fn from_native(h: &NativeHistogram) -> FloatHist {
        let f = |v: Vec<(i32, u64)>| v.into_iter().map(|(i, c)| (i, c as f64)).collect();
        FloatHist {
            schema: h.schema,
            zero_threshold: h.zero_threshold,
            zero_count: h.zero_count as f64,
            count: h.count as f64,
            sum: h.sum,
            positive: f(h.positive_buckets()),
            negative: f(h.negative_buckets()),
            reset_hint: h.counter_reset,
        }
    }

    /// The same histogram at a lower (coarser) schema; a higher one leaves it unchanged.
    pub fn to_schema(&self, schema: i32) -> FloatHist {
        if schema >= self.schema {
            return self.clone();
        }
        FloatHist {
            schema,
            positive: to_schema_buckets(&self.positive, self.schema, schema),
            negative: to_schema_buckets(&self.negative, self.schema, schema),
            ..self.clone()
        }
    }

    fn combine(&self, other: &FloatHist, sign: f64) -> FloatHist {
        let schema = self.schema.min(other.schema);
        let a = self.to_schema(schema);
        let b = other.to_schema(schema);
        FloatHist {
            schema,
            zero_threshold: a.zero_threshold.max(b.zero_threshold),
            zero_count: a.zero_count + sign * b.zero_count,
            count: a.count + sign * b.count,
            sum: a.sum + sign * b.sum,
            positive: merge(&a.positive, &b.positive, sign),
            negative: merge(&a.negative, &b.negative, sign),
            reset_hint: false,
        }
    }

    /// `self + other`, at the lower of the two schemas.
    pub fn add(&self, other: &FloatHist) -> FloatHist {
        self.combine(other, 1.0)
    }

    /// `self - other`, at the lower of the two schemas.
    pub fn sub(&self, other: &FloatHist) -> FloatHist {
        self.combine(other, -1.0)
    }

    /// Every count and the sum multiplied by `f`.
    pub fn scale(&self, f: f64) -> FloatHist {
        let s = |v: &[(i32, f64)]| v.iter().map(|&(i, c)| (i, c * f)).collect();
        FloatHist {
            zero_count: self.zero_count * f,
            count: self.count * f,
            sum: self.sum * f,
            positive: s(&self.positive),
            negative: s(&self.negative),
            ..self.clone()
        }
    }

    /// Whether `self` (the later sample) restarted counting after `prev`: the hint is set, the
    /// count went down, or any bucket (at the common schema) went down.
    pub fn detect_reset(&self, prev: &FloatHist) -> bool {
        if self.reset_hint || self.count < prev.count || self.zero_count < prev.zero_count {
            return true;
        }
        if self.schema > prev.schema {
            return true;
        }
        let cur = self.to_schema(self.schema.min(prev.schema));
        let old = prev.to_schema(self.schema.min(prev.schema));
        let dropped = |a: &[(i32, f64)], b: &[(i32, f64)]| merge(a, b, -1.0).iter().any(|&(_, d)| d < 0.0);
        dropped(&cur.positive, &old.positive) || dropped(&cur.negative, &old.negative)
    }

    /// Every bucket in value order: negative buckets (most negative first), the zero bucket
    /// (when it has observations), positive buckets.
    pub fn buckets(&self) -> Vec<Bucket> {
        let mut out = Vec::with_capacity(self.positive.len() + self.negative.len() + 1);
        for &(i, c) in self.negative.iter().rev() {
            if c != 0.0 {
                let upper = -bucket_bound(self.schema, i - 1);
                out.push(Bucket { lower: -bucket_bound(self.schema, i), upper, rule: 1, count: c });
            }
        }
        if self.zero_count != 0.0 {
            out.push(Bucket {
                lower: -self.zero_threshold,
                upper: self.zero_threshold,
                rule: 3,
                count: self.zero_count,
            });
        }
        for &(i, c) in &self.positive {
            if c != 0.0 {
                let lower = bucket_bound(self.schema, i - 1);
                out.push(Bucket { lower, upper: bucket_bound(self.schema, i), rule: 0, count: c });
            }
        }
        out
    }

    /// The φ-quantile, interpolating linearly inside the bucket (Prometheus 2.x semantics).
    pub fn quantile(&self, q: f64) -> f64 {
        if q < 0.0 {
            return f64::NEG_INFINITY;
        }
        if q > 1.0 {
            return f64::INFINITY;
        }
        if self.count == 0.0 || q.is_nan() {
            return f64::NAN;
        }
        let rank = q * self.count;
        let buckets = self.buckets();
        let mut count = 0.0;
        let mut found: Option<Bucket> = None;
        for b in &buckets {
            count += b.count;
            found = Some(*b);
            if count >= rank {
                break;
            }
        }
        let Some(mut b) = found else { return f64::NAN };
        if b.lower < 0.0 && b.upper > 0.0 {
            if self.negative.is_empty() && !self.positive.is_empty() {
                b.lower = 0.0;
            } else if self.positive.is_empty() && !self.negative.is_empty() {
                b.upper = 0.0;
            }
        }
        if count > self.count {
            count = self.count;
        }
        if count < rank {
            return b.upper;
        }
        let rank_in_bucket = rank - (count - b.count);
        b.lower + (b.upper - b.lower) * (rank_in_bucket / b.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(schema: i32, positive: Vec<(i32, f64)>, zero: f64) -> FloatHist {
        let count = positive.iter().map(|b| b.1).sum::<f64>() + zero;
        FloatHist {
            schema,
            zero_threshold: 0.001,
            zero_count: zero,
            count,
            sum: 0.0,
            positive,
            negative: Vec::new(),
            reset_hint: false,
        }
    }

    #[test]
    fn bounds_at_several_schemas() {
        assert_eq!(bucket_bound(0, 1), 2.0);
        assert_eq!(bucket_bound(0, 0), 1.0);
        assert_eq!(bucket_bound(-1, 1), 4.0);
        assert!((bucket_bound(1, 1) - std::f64::consts::SQRT_2).abs() < 1e-15);
        assert_eq!(bucket_bound(3, 8), 2.0);
    }

    #[test]
    fn downscaling_merges_bucket_pairs() {
        // Schema 1: index 1 (1, 1.41], 2 (1.41, 2], 3 (2, 2.83], 4 (2.83, 4]; schema 0: 1 (1,2], 2 (2,4].
        let a = h(1, vec![(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)], 0.0).to_schema(0);
        assert_eq!(a.positive, vec![(1, 3.0), (2, 7.0)]);
    }

    #[test]
    fn add_and_sub_align_schemas() {
        let a = h(1, vec![(1, 1.0), (2, 1.0)], 1.0);
        let b = h(0, vec![(1, 2.0)], 0.0);
        let s = a.add(&b);
        assert_eq!((s.schema, s.count, s.zero_count), (0, 5.0, 1.0));
        assert_eq!(s.positive, vec![(1, 4.0)]);
        let d = s.sub(&b);
        assert_eq!(d.positive, vec![(1, 2.0)]);
    }

    #[test]
    fn quantile_interpolates_linearly_inside_the_bucket() {
        // Buckets (1,2]: 2, (2,4]: 2 -> median at the top of the first bucket, 0.75 in the middle of the second.
        let x = h(0, vec![(1, 2.0), (2, 2.0)], 0.0);
        assert_eq!(x.quantile(0.5), 2.0);
        assert_eq!(x.quantile(0.75), 3.0);
        assert_eq!(x.quantile(1.0), 4.0);
        assert_eq!(x.quantile(0.0), 1.0);
        assert_eq!(x.quantile(-1.0), f64::NEG_INFINITY);
        assert_eq!(x.quantile(2.0), f64::INFINITY);
        // The zero bucket with only positive buckets has 0 as its lower bound.
        let z = h(0, vec![(1, 1.0)], 1.0);
        assert_eq!(z.quantile(0.25), 0.0005);
        assert!(h(0, vec![], 0.0).quantile(0.5).is_nan());
    }

    #[test]
    fn resets_are_detected_per_bucket() {
        let a = h(0, vec![(1, 2.0), (2, 2.0)], 0.0);
        let b = h(0, vec![(1, 3.0), (2, 1.0)], 0.0);
        assert!(b.detect_reset(&a));
        let c = h(0, vec![(1, 3.0), (2, 2.0)], 0.0);
        assert!(!c.detect_reset(&a));
    }
}
