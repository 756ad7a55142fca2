//! Structural diff of two traces: spans are matched by their path of (service, operation) from
//! the root, so the same call made in both traces lines up even though every id differs.

use std::collections::HashMap;

use super::model::TraceTree;
use crate::query::service_name;

/// Relative change below which a duration counts as unchanged.
const SAME_RATIO: f64 = 0.10;
/// Absolute change below which a duration counts as unchanged (timer noise).
const SAME_NS: u64 = 100_000;

/// What happened to a path between trace A and trace B.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Change {
    /// Only in B (or more calls in B).
    Added,
    /// Only in A (or fewer calls in B).
    Removed,
    /// Mean duration up by more than 10 % and 100 µs.
    Slower,
    /// Mean duration down by more than 10 % and 100 µs.
    Faster,
    /// Neither.
    Same,
}

impl Change {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Slower => "slower",
            Change::Faster => "faster",
            Change::Same => "same",
        }
    }
}

/// One (service, operation) path and how it compares.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct DiffRow {
    /// (service, operation) from the root down to this span.
    pub path: Vec<(String, String)>,
    pub a_count: usize,
    pub b_count: usize,
    /// Mean duration in A (0 when absent).
    pub a_mean_ns: u64,
    /// Mean duration in B (0 when absent).
    pub b_mean_ns: u64,
    pub change: Change,
}

impl DiffRow {
    /// The service of the last step.
    pub(crate) fn service(&self) -> &str {
        self.path.last().map(|p| p.0.as_str()).unwrap_or("")
    }

    /// The operation of the last step.
    pub(crate) fn name(&self) -> &str {
        self.path.last().map(|p| p.1.as_str()).unwrap_or("")
    }

    /// The ancestors as `service: operation › ...`.
    pub(crate) fn ancestors(&self) -> String {
        let n = self.path.len().saturating_sub(1);
        self.path[..n].iter().map(|(s, o)| format!("{s}: {o}")).collect::<Vec<_>>().join(" › ")
    }

    /// B's mean minus A's mean, in ns.
    pub(crate) fn delta_ns(&self) -> i128 {
        self.b_mean_ns as i128 - self.a_mean_ns as i128
    }
}

type Path = Vec<(String, String)>;

/// (count, total duration) per path, and the paths in first-seen display order.
fn paths(t: &TraceTree) -> (HashMap<Path, (usize, u64)>, Vec<Path>) {
    let mut of_pos: Vec<Path> = Vec::with_capacity(t.order.len());
    let mut out: HashMap<Path, (usize, u64)> = HashMap::new();
    let mut seen = Vec::new();
    for node in &t.order {
        let s = &t.trace.spans[node.span];
        let mut path = node.parent.map(|p| of_pos[p as usize].clone()).unwrap_or_default();
        path.push((service_name(s).to_string(), s.span.name.clone()));
        let e = out.entry(path.clone()).or_insert_with(|| {
            seen.push(path.clone());
            (0, 0)
        });
        e.0 += 1;
        e.1 += s.span.end_time_unix_nano.saturating_sub(s.span.start_time_unix_nano);
        of_pos.push(path);
    }
    (out, seen)
}

/// Every path of A and B with its change, changed ones first (added, removed, slower, faster),
/// each group in display order.
pub(crate) fn diff(a: &TraceTree, b: &TraceTree) -> Vec<DiffRow> {
    let (pa, order_a) = paths(a);
    let (pb, order_b) = paths(b);
    let mut rows = Vec::new();
    let mut keys = order_a;
    keys.extend(order_b.into_iter().filter(|k| !pa.contains_key(k)));
    for path in keys {
        let (a_count, a_total) = pa.get(&path).copied().unwrap_or((0, 0));
        let (b_count, b_total) = pb.get(&path).copied().unwrap_or((0, 0));
        let a_mean_ns = if a_count > 0 { a_total / a_count as u64 } else { 0 };
        let b_mean_ns = if b_count > 0 { b_total / b_count as u64 } else { 0 };
        let change = if b_count > a_count {
            Change::Added
        } else if b_count < a_count {
            Change::Removed
        } else {
            let d = b_mean_ns as f64 - a_mean_ns as f64;
            let big = d.abs() > a_mean_ns as f64 * SAME_RATIO && d.abs() > SAME_NS as f64;
            match (big, d > 0.0) {
                (true, true) => Change::Slower,
                (true, false) => Change::Faster,
                _ => Change::Same,
            }
        };
        rows.push(DiffRow { path, a_count, b_count, a_mean_ns, b_mean_ns, change });
    }
    rows.sort_by_key(|r| r.change);
    rows
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::rec;
    use super::*;
    use crate::query::Trace;

    fn tree(spans: Vec<obsbox_storage::SpanRecord>) -> TraceTree {
        TraceTree::new(Trace::assemble(vec![1; 16], spans))
    }

    #[test]
    fn added_removed_and_slower_spans() {
        let a = tree(vec![
            rec("web", 1, None, "GET /", 0, 100),
            rec("db", 2, Some(1), "select", 10, 20),
            rec("cache", 3, Some(1), "get", 30, 31),
            rec("web", 4, Some(1), "render", 40, 50),
        ]);
        let b = tree(vec![
            rec("web", 1, None, "GET /", 0, 100),
            rec("db", 2, Some(1), "select", 10, 60),
            rec("web", 4, Some(1), "render", 60, 70),
            rec("web", 5, Some(1), "coupon", 70, 80),
        ]);
        let rows = diff(&a, &b);
        let find = |name: &str| rows.iter().find(|r| r.name() == name).unwrap();
        assert_eq!(find("coupon").change, Change::Added);
        assert_eq!(find("get").change, Change::Removed);
        assert_eq!(find("select").change, Change::Slower);
        assert_eq!(find("select").delta_ns(), 40_000_000);
        assert_eq!(find("render").change, Change::Same);
        assert_eq!(find("select").ancestors(), "web: GET /");
        assert_eq!(rows[0].change, Change::Added, "changes first");
    }

    #[test]
    fn same_operation_under_another_parent_is_another_path() {
        let a = tree(vec![rec("web", 1, None, "GET /", 0, 100), rec("db", 2, Some(1), "select", 10, 20)]);
        let b = tree(vec![
            rec("web", 1, None, "GET /", 0, 100),
            rec("api", 3, Some(1), "call", 5, 50),
            rec("db", 2, Some(3), "select", 10, 20),
        ]);
        let rows = diff(&a, &b);
        assert_eq!(rows.iter().filter(|r| r.name() == "select").count(), 2);
    }
}
