//! A trace laid out for display: spans in depth-first order with depth and subtree size, self
//! time, the critical path and per-operation statistics, plus the compact JSON the waterfall
//! script reads.
//!
//! Everything here is computed once per request in O(n log n), so that the browser only has to
//! draw: a collapsed subtree is the contiguous range `i..i + size` of the order.

use std::collections::HashMap;

use obsbox_storage::{SpanRecord, any_value_text};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use serde::Serialize;

use crate::query::{Trace, service_name};

/// One span in display order.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    /// Index into [`TraceTree::trace`]`.spans`.
    pub span: usize,
    /// 0 for roots.
    pub depth: u32,
    /// This span plus all its descendants.
    pub size: u32,
    /// Position of the parent in [`TraceTree::order`], `None` for roots.
    pub parent: Option<u32>,
    /// Duration minus the time covered by its children (clipped to the span).
    pub self_ns: u64,
    /// On the critical path of the first root.
    pub critical: bool,
}

/// The trace with its display order and derived figures.
pub(crate) struct TraceTree {
    /// The adjusted trace.
    pub trace: Trace,
    /// Spans in depth-first order, children by start time.
    pub order: Vec<Node>,
    /// Earliest start, Unix ns.
    pub start_ns: u64,
    /// Latest end minus earliest start.
    pub duration_ns: u64,
}

/// Count, total and self time of one (service, operation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OpStats {
    pub service: String,
    pub name: String,
    pub count: u64,
    pub total_ns: u64,
    pub self_ns: u64,
    pub errors: u64,
}

pub(crate) fn is_error(s: &SpanRecord) -> bool {
    s.span.status.as_ref().is_some_and(|st| st.code == 2)
}

impl TraceTree {
    /// Lays out `trace`. Parent cycles (possible in hostile data) are broken: a span not reached
    /// from a root becomes a root itself.
    pub(crate) fn new(trace: Trace) -> TraceTree {
        let spans = &trace.spans;
        let n = spans.len();
        let index: HashMap<&[u8], usize> =
            spans.iter().enumerate().map(|(i, s)| (s.span.span_id.as_slice(), i)).collect();
        let parent_of: Vec<Option<usize>> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| index.get(s.span.parent_span_id.as_slice()).copied().filter(|&p| p != i))
            .collect();
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut roots = Vec::new();
        for (i, p) in parent_of.iter().enumerate() {
            match p {
                Some(p) => children[*p].push(i),
                None => roots.push(i),
            }
        }
        // Spans are sorted by start already (Trace::assemble), so children lists are too.
        // True roots before spans whose parent is missing.
        roots.sort_by_key(|&i| (!spans[i].span.parent_span_id.is_empty(), spans[i].span.start_time_unix_nano, i));

        let mut order: Vec<Node> = Vec::with_capacity(n);
        let mut visited = vec![false; n];
        let walk = |root: usize, order: &mut Vec<Node>, visited: &mut Vec<bool>| {
            // (span, depth, parent position); children pushed in reverse to pop in start order.
            let mut stack: Vec<(usize, u32, Option<u32>)> = vec![(root, 0, None)];
            while let Some((i, depth, parent)) = stack.pop() {
                if std::mem::replace(&mut visited[i], true) {
                    continue;
                }
                let pos = order.len() as u32;
                order.push(Node { span: i, depth, size: 1, parent, self_ns: 0, critical: false });
                for &c in children[i].iter().rev() {
                    if !visited[c] {
                        stack.push((c, depth + 1, Some(pos)));
                    }
                }
            }
        };
        for &r in &roots {
            walk(r, &mut order, &mut visited);
        }
        // Cycles: nothing reaches them from a root.
        for i in 0..n {
            if !visited[i] {
                walk(i, &mut order, &mut visited);
            }
        }
        // Subtree sizes: children come after their parent in the order.
        for pos in (0..order.len()).rev() {
            if let Some(p) = order[pos].parent {
                order[p as usize].size += order[pos].size;
            }
        }

        let start_ns = trace.start_ns();
        let duration_ns = trace.duration_ns();
        let mut tree = TraceTree { trace, order, start_ns, duration_ns };
        tree.compute_self_times();
        tree.compute_critical_path();
        tree
    }

    fn record(&self, pos: usize) -> &SpanRecord {
        &self.trace.spans[self.order[pos].span]
    }

    /// Positions of the direct children of `pos`, in start order.
    pub(crate) fn children(&self, pos: usize) -> impl Iterator<Item = usize> + '_ {
        let end = pos + self.order[pos].size as usize;
        let mut next = pos + 1;
        std::iter::from_fn(move || {
            if next >= end {
                return None;
            }
            let c = next;
            next += self.order[c].size as usize;
            Some(c)
        })
    }

    fn compute_self_times(&mut self) {
        for pos in 0..self.order.len() {
            let (s, e) = {
                let r = &self.record(pos).span;
                (r.start_time_unix_nano, r.end_time_unix_nano.max(r.start_time_unix_nano))
            };
            let mut intervals: Vec<(u64, u64)> = self
                .children(pos)
                .map(|c| {
                    let r = &self.record(c).span;
                    (r.start_time_unix_nano.clamp(s, e), r.end_time_unix_nano.clamp(s, e))
                })
                .filter(|(a, b)| b > a)
                .collect();
            intervals.sort_unstable();
            let mut covered = 0;
            let mut cur: Option<(u64, u64)> = None;
            for (a, b) in intervals {
                match cur {
                    Some((ca, cb)) if a <= cb => cur = Some((ca, cb.max(b))),
                    Some((ca, cb)) => {
                        covered += cb - ca;
                        cur = Some((a, b));
                    }
                    None => cur = Some((a, b)),
                }
            }
            if let Some((ca, cb)) = cur {
                covered += cb - ca;
            }
            self.order[pos].self_ns = (e - s).saturating_sub(covered);
        }
    }

    /// The critical path of the first root, as jaeger-ui computes it: from the end of a span
    /// backwards, the child that finished last before the cursor is on the path (recursively),
    /// and the cursor moves to that child's start.
    fn compute_critical_path(&mut self) {
        if self.order.is_empty() {
            return;
        }
        let mut stack: Vec<(usize, u64)> = vec![(0, u64::MAX)];
        while let Some((pos, limit)) = stack.pop() {
            self.order[pos].critical = true;
            let r = &self.record(pos).span;
            let start = r.start_time_unix_nano;
            let span_end = r.end_time_unix_nano.min(limit);
            let mut cursor = span_end;
            let mut kids: Vec<(u64, u64, usize)> = self
                .children(pos)
                .map(|c| {
                    let k = &self.record(c).span;
                    (k.end_time_unix_nano, k.start_time_unix_nano, c)
                })
                .collect();
            kids.sort_unstable_by(|a, b| b.cmp(a));
            for (end, child_start, c) in kids {
                if cursor <= start {
                    break;
                }
                // Only a child that has finished by the cursor blocks it (one overflowing the
                // span's end counts as ending there).
                if child_start >= cursor || end.min(span_end) > cursor {
                    continue;
                }
                stack.push((c, end.min(cursor)));
                cursor = child_start;
            }
        }
    }

    /// Statistics per (service, operation), most self time first.
    pub(crate) fn stats(&self) -> Vec<OpStats> {
        let mut by_op: HashMap<(&str, &str), OpStats> = HashMap::new();
        for node in &self.order {
            let s = &self.trace.spans[node.span];
            let service = service_name(s);
            let e = by_op.entry((service, s.span.name.as_str())).or_insert_with(|| OpStats {
                service: service.to_string(),
                name: s.span.name.clone(),
                count: 0,
                total_ns: 0,
                self_ns: 0,
                errors: 0,
            });
            e.count += 1;
            e.total_ns += s.span.end_time_unix_nano.saturating_sub(s.span.start_time_unix_nano);
            e.self_ns += node.self_ns;
            e.errors += is_error(s) as u64;
        }
        let mut out: Vec<OpStats> = by_op.into_values().collect();
        out.sort_by(|a, b| b.self_ns.cmp(&a.self_ns).then_with(|| (&a.service, &a.name).cmp(&(&b.service, &b.name))));
        out
    }

    /// Position in the order of the span with id `span_id`.
    pub(crate) fn position_of(&self, span_id: &[u8]) -> Option<usize> {
        self.order.iter().position(|n| self.trace.spans[n.span].span.span_id == span_id)
    }

    /// The compact form the waterfall script reads.
    pub(crate) fn data(&self) -> TraceData {
        let mut strings = Interner::default();
        strings.get(""); // index 0 is the empty string
        let mut resources: Vec<ResourceData> = Vec::new();
        let mut resource_ids: HashMap<*const opentelemetry_proto::tonic::resource::v1::Resource, u32> = HashMap::new();
        let mut resource_by_content: HashMap<Vec<u32>, u32> = HashMap::new();
        let mut scopes: Vec<ScopeData> = Vec::new();
        let mut scope_ids: HashMap<*const opentelemetry_proto::tonic::common::v1::InstrumentationScope, u32> =
            HashMap::new();
        let mut scope_by_content: HashMap<Vec<u32>, u32> = HashMap::new();
        let mut spans = Vec::with_capacity(self.order.len());
        let mut pos_of_span = vec![0u32; self.trace.spans.len()];
        for (pos, node) in self.order.iter().enumerate() {
            pos_of_span[node.span] = pos as u32;
        }
        for node in &self.order {
            let s = &self.trace.spans[node.span];
            let res = *resource_ids.entry(std::sync::Arc::as_ptr(&s.resource)).or_insert_with(|| {
                let attrs = strings.attrs(&s.resource.attributes);
                let next = resource_by_content.len() as u32;
                *resource_by_content.entry(attrs.clone()).or_insert_with(|| {
                    resources.push(ResourceData { service: strings.get(service_name(s)), attrs });
                    next
                })
            });
            let scope = *scope_ids.entry(std::sync::Arc::as_ptr(&s.scope)).or_insert_with(|| {
                let mut key = vec![strings.get(&s.scope.name), strings.get(&s.scope.version)];
                let attrs = strings.attrs(&s.scope.attributes);
                key.extend(&attrs);
                let next = scope_by_content.len() as u32;
                *scope_by_content.entry(key.clone()).or_insert_with(|| {
                    scopes.push(ScopeData { name: key[0], version: key[1], attrs });
                    next
                })
            });
            let sp = &s.span;
            let events: Vec<(u64, u32, Vec<u32>)> = sp
                .events
                .iter()
                .map(|e| {
                    (e.time_unix_nano.saturating_sub(self.start_ns), strings.get(&e.name), strings.attrs(&e.attributes))
                })
                .collect();
            let links: Vec<(String, String, Vec<u32>)> = sp
                .links
                .iter()
                .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id), strings.attrs(&l.attributes)))
                .collect();
            let status = sp.status.as_ref().map(|st| st.code).unwrap_or(0);
            let message = sp.status.as_ref().map(|st| strings.get(&st.message)).unwrap_or(0);
            spans.push(SpanRow(
                hex::encode(&sp.span_id),
                node.depth,
                node.size,
                node.parent.map(i64::from).unwrap_or(-1),
                res,
                scope,
                strings.get(&sp.name),
                sp.kind,
                sp.start_time_unix_nano.saturating_sub(self.start_ns),
                sp.end_time_unix_nano.saturating_sub(sp.start_time_unix_nano),
                node.self_ns,
                status,
                message,
                u8::from(node.critical),
                strings.attrs(&sp.attributes),
                events,
                links,
            ));
        }
        let warnings = self
            .trace
            .warnings
            .iter()
            .filter_map(|w| {
                let i = self.trace.spans.iter().position(|s| s.span.span_id == w.span_id)?;
                Some((pos_of_span[i], w.message.clone()))
            })
            .collect();
        TraceData {
            trace_id: hex::encode(&self.trace.trace_id),
            start_ns: self.start_ns.to_string(),
            duration_ns: self.duration_ns,
            strings: strings.list,
            resources,
            scopes,
            spans,
            warnings,
        }
    }
}

#[derive(Default)]
struct Interner {
    list: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Interner {
    fn get(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = self.list.len() as u32;
        self.list.push(s.to_string());
        self.ids.insert(s.to_string(), i);
        i
    }

    /// `[key, value, key, value, ...]` as string indexes, values as text.
    fn attrs(&mut self, attrs: &[KeyValue]) -> Vec<u32> {
        let mut out = Vec::with_capacity(attrs.len() * 2);
        for kv in attrs {
            out.push(self.get(&kv.key));
            let text = kv.value.as_ref().map(any_value_text).unwrap_or_default();
            out.push(self.get(&text));
        }
        out
    }
}

/// The waterfall's data: strings are interned (`strings[i]`); times are ns offsets from
/// `startNs` (a decimal string: Unix ns do not fit a JavaScript number).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TraceData {
    pub trace_id: String,
    pub start_ns: String,
    pub duration_ns: u64,
    pub strings: Vec<String>,
    pub resources: Vec<ResourceData>,
    pub scopes: Vec<ScopeData>,
    /// In depth-first display order.
    pub spans: Vec<SpanRow>,
    /// `(span position, message)` from the adjusters.
    pub warnings: Vec<(u32, String)>,
}

#[derive(Serialize)]
pub(crate) struct ResourceData {
    pub service: u32,
    pub attrs: Vec<u32>,
}

#[derive(Serialize)]
pub(crate) struct ScopeData {
    pub name: u32,
    pub version: u32,
    pub attrs: Vec<u32>,
}

/// One span as a JSON array: `[id, depth, size, parent, resource, scope, name, kind, start,
/// duration, self, status, message, critical, attrs, events, links]`; `parent` is a position or
/// -1; events are `[offset, name, attrs]`, links `[traceId, spanId, attrs]`. `trace.js` reads
/// the fields by these positions.
#[derive(Serialize)]
pub(crate) struct SpanRow(
    String,
    u32,
    u32,
    i64,
    u32,
    u32,
    u32,
    i32,
    u64,
    u64,
    u64,
    i32,
    u32,
    u8,
    Vec<u32>,
    Vec<(u64, u32, Vec<u32>)>,
    Vec<(String, String, Vec<u32>)>,
);

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, any_value::Value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{Span, Status};

    use super::*;

    /// A span of `service` with id `[0,..,id]`, parent `[0,..,p]`, in ms.
    pub(crate) fn rec(service: &str, id: u8, parent: Option<u8>, name: &str, start_ms: u64, end_ms: u64) -> SpanRecord {
        SpanRecord {
            resource: Arc::new(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue { value: Some(Value::StringValue(service.into())) }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            resource_schema_url: String::new(),
            scope: Arc::new(InstrumentationScope::default()),
            scope_schema_url: String::new(),
            span: Span {
                trace_id: vec![1; 16],
                span_id: vec![0, 0, 0, 0, 0, 0, 0, id],
                parent_span_id: parent.map(|p| vec![0, 0, 0, 0, 0, 0, 0, p]).unwrap_or_default(),
                name: name.into(),
                start_time_unix_nano: 1_000_000_000 + start_ms * 1_000_000,
                end_time_unix_nano: 1_000_000_000 + end_ms * 1_000_000,
                status: Some(Status::default()),
                ..Default::default()
            },
        }
    }

    fn tree(spans: Vec<SpanRecord>) -> TraceTree {
        TraceTree::new(Trace::assemble(vec![1; 16], spans))
    }

    fn names(t: &TraceTree) -> Vec<(String, u32, u32)> {
        t.order.iter().map(|n| (t.trace.spans[n.span].span.name.clone(), n.depth, n.size)).collect()
    }

    #[test]
    fn depth_first_order_with_depths_and_sizes() {
        let t = tree(vec![
            rec("a", 1, None, "root", 0, 100),
            rec("a", 3, Some(1), "second", 50, 90),
            rec("a", 2, Some(1), "first", 10, 40),
            rec("b", 4, Some(2), "inner", 20, 30),
        ]);
        let expected = [("root", 0, 4), ("first", 1, 2), ("inner", 2, 1), ("second", 1, 1)];
        let got = names(&t);
        assert_eq!(got.len(), 4);
        for (g, e) in got.iter().zip(expected) {
            assert_eq!((g.0.as_str(), g.1, g.2), e);
        }
        assert_eq!(t.children(0).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(t.order[2].parent, Some(1));
    }

    #[test]
    fn self_time_subtracts_the_union_of_children() {
        let t = tree(vec![
            rec("a", 1, None, "root", 0, 100),
            rec("a", 2, Some(1), "x", 10, 40),
            rec("a", 3, Some(1), "y", 30, 50),
            rec("a", 4, Some(1), "z", 90, 120),
        ]);
        // covered: 10..50 and 90..100 (clipped) = 50 ms
        assert_eq!(t.order[0].self_ns, 50_000_000);
        assert_eq!(t.order[1].self_ns, 30_000_000);
    }

    #[test]
    fn critical_path_follows_the_last_finishing_children() {
        let t = tree(vec![
            rec("a", 1, None, "root", 0, 100),
            rec("a", 2, Some(1), "early", 5, 20),
            rec("a", 3, Some(1), "overlapped", 30, 60),
            rec("a", 4, Some(1), "last", 40, 95),
            rec("a", 5, Some(4), "inside-last", 50, 70),
        ]);
        let critical: Vec<&str> =
            t.order.iter().filter(|n| n.critical).map(|n| t.trace.spans[n.span].span.name.as_str()).collect();
        assert_eq!(critical, vec!["root", "early", "last", "inside-last"]);
    }

    #[test]
    fn parent_cycles_do_not_lose_spans() {
        let t = tree(vec![
            rec("a", 1, None, "root", 0, 100),
            rec("a", 2, Some(3), "x", 10, 20),
            rec("a", 3, Some(2), "y", 30, 40),
        ]);
        let mut seen: Vec<usize> = t.order.iter().map(|n| n.span).collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2], "every span exactly once");
        assert!(t.order.iter().all(|n| n.size >= 1));
    }

    #[test]
    fn stats_per_operation() {
        let mut err = rec("b", 3, Some(1), "q", 50, 60);
        err.span.status = Some(Status { code: 2, message: "boom".into() });
        let t = tree(vec![rec("a", 1, None, "root", 0, 100), rec("b", 2, Some(1), "q", 10, 40), err]);
        let stats = t.stats();
        assert_eq!(stats[0].name, "root");
        assert_eq!(stats[0].self_ns, 60_000_000);
        let q = stats.iter().find(|s| s.name == "q").unwrap();
        assert_eq!((q.count, q.total_ns, q.errors), (2, 40_000_000, 1));
    }

    #[test]
    fn compact_data_interns_strings_and_offsets_times() {
        let t = tree(vec![rec("a", 1, None, "root", 0, 100), rec("a", 2, Some(1), "root", 10, 40)]);
        let d = t.data();
        assert_eq!(d.resources.len(), 1, "identical resources are sent once");
        assert_eq!(d.strings[0], "");
        let j = serde_json::to_value(&d).unwrap();
        let second = &j["spans"][1];
        assert_eq!(second[0], "0000000000000002");
        assert_eq!(second[3], 0, "parent position");
        assert_eq!(second[8], 10_000_000, "start offset");
        assert_eq!(second[9], 30_000_000, "duration");
        assert_eq!(j["spans"][0][6], second[6], "names interned");
        assert_eq!(j["startNs"], "1000000000");
    }
}
