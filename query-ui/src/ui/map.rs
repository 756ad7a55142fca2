//! The service map at `/map`: a server-rendered SVG graph of services. Edges come from the
//! derived service graph metrics (`traces_service_graph_request_total` and
//! `..._failed_total`, increase over the range), or, when the range has none, from the spans
//! themselves (`QueryService::dependencies`). Nodes are laid out in layers by call depth
//! (callers left of callees), ordered inside a layer by the mean position of their callers to
//! limit crossings; the same graph always gives the same picture.
//!
//! URL state: the range (`range` or `from`/`to`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use obsbox_storage::{LabelMatcher, MatchOp, MetricQuery, TimeRange};
use serde::Deserialize;

use super::range::{RangeParams, UiRange, url};
use super::red::{Running, read_series};
use super::services::BASELINE_NS;
use super::{Layout, Nav, UiError, blocking, fmt, render, svc_class};
use crate::AppState;

pub(crate) const REQUESTS: &str = "traces_service_graph_request_total";
pub(crate) const FAILED: &str = "traces_service_graph_request_failed_total";

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/map", get(page))
}

#[derive(Deserialize)]
struct Params {
    #[serde(flatten)]
    range: RangeParams,
}

/// One edge of the graph before layout.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Edge {
    pub client: String,
    pub server: String,
    pub calls: f64,
    pub failed: f64,
    /// `""`, `messaging_system` or `database`.
    pub connection_type: String,
}

struct NodeView {
    name: String,
    class: String,
    href: String,
    x: String,
    y: String,
    text_x: String,
    text_y: String,
    sub_y: String,
    figures: String,
    title: String,
    database: bool,
}

struct EdgeView {
    path: String,
    width: String,
    class: &'static str,
    title: String,
}

#[derive(Template)]
#[template(path = "map.html")]
struct MapPage {
    layout: Layout,
    range: UiRange,
    source: &'static str,
    nodes: Vec<NodeView>,
    edges: Vec<EdgeView>,
    width: String,
    height: String,
}

const NODE_W: f64 = 170.0;
const NODE_H: f64 = 44.0;
const COL_GAP: f64 = 110.0;
const ROW_GAP: f64 = 26.0;
const MARGIN: f64 = 20.0;

/// Layer (column) of every node: breadth-first depth from the nodes nobody calls; nodes only
/// on cycles start from the alphabetically first one left.
fn layers(nodes: &BTreeSet<String>, edges: &[Edge]) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    let called: BTreeSet<&str> = edges.iter().filter(|e| e.client != e.server).map(|e| e.server.as_str()).collect();
    let mut queue: VecDeque<String> = nodes.iter().filter(|n| !called.contains(n.as_str())).cloned().collect();
    loop {
        for n in &queue {
            out.insert(n.clone(), 0);
        }
        while let Some(n) = queue.pop_front() {
            let d = out[&n];
            for e in edges.iter().filter(|e| e.client == n && e.server != n) {
                if !out.contains_key(&e.server) {
                    out.insert(e.server.clone(), d + 1);
                    queue.push_back(e.server.clone());
                }
            }
        }
        match nodes.iter().find(|n| !out.contains_key(*n)) {
            Some(n) => queue.push_back(n.clone()),
            None => break,
        }
    }
    out
}

fn edge_class(error_rate: f64) -> &'static str {
    if error_rate >= 0.05 {
        "edge err"
    } else if error_rate >= 0.01 {
        "edge warn"
    } else {
        "edge ok"
    }
}

async fn metric_edges(state: &AppState, time: TimeRange) -> Result<Vec<Edge>, UiError> {
    let fetch =
        TimeRange { start_ns: time.start_ns.saturating_sub(BASELINE_NS), end_ns: time.end_ns.saturating_add(1) };
    let reader = state.reader.clone();
    let matchers =
        vec![LabelMatcher { name: "__name__".into(), op: MatchOp::Re, value: format!("{REQUESTS}|{FAILED}") }];
    let data = blocking(move || reader.find_metrics(&MetricQuery { matchers, time: fetch })).await?;
    let mut by_pair: BTreeMap<(String, String, String), Edge> = BTreeMap::new();
    for s in read_series(&data) {
        let inc = Running::new(&s.samples, fetch.start_ns).increase(time.start_ns, time.end_ns);
        let key =
            (s.label("client").to_string(), s.label("server").to_string(), s.label("connection_type").to_string());
        let e = by_pair.entry(key.clone()).or_insert_with(|| Edge {
            client: key.0,
            server: key.1,
            calls: 0.0,
            failed: 0.0,
            connection_type: key.2,
        });
        if s.name == REQUESTS {
            e.calls += inc;
        } else {
            e.failed += inc;
        }
    }
    Ok(by_pair.into_values().filter(|e| e.calls > 0.0).collect())
}

fn layout_graph(edges: &[Edge], range: &UiRange) -> (Vec<NodeView>, Vec<EdgeView>, f64, f64) {
    let mut nodes: BTreeSet<String> = BTreeSet::new();
    for e in edges {
        nodes.insert(e.client.clone());
        nodes.insert(e.server.clone());
    }
    let layer = layers(&nodes, edges);
    let n_layers = layer.values().max().map(|m| m + 1).unwrap_or(0);
    // order inside layers: by the mean row of callers in earlier layers, then by name
    let mut rows: Vec<Vec<String>> = vec![Vec::new(); n_layers];
    let mut row_of: BTreeMap<String, f64> = BTreeMap::new();
    for (l, col) in rows.iter_mut().enumerate() {
        let mut members: Vec<(f64, String)> = layer
            .iter()
            .filter(|(_, nl)| **nl == l)
            .map(|(n, _)| {
                let callers: Vec<f64> =
                    edges.iter().filter(|e| &e.server == n).filter_map(|e| row_of.get(&e.client).copied()).collect();
                let key =
                    if callers.is_empty() { f64::MAX } else { callers.iter().sum::<f64>() / callers.len() as f64 };
                (key, n.clone())
            })
            .collect();
        members.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        for (i, (_, n)) in members.into_iter().enumerate() {
            row_of.insert(n.clone(), i as f64);
            col.push(n);
        }
    }
    let tallest = rows.iter().map(Vec::len).max().unwrap_or(0) as f64;
    let height = MARGIN * 2.0 + tallest * NODE_H + (tallest - 1.0).max(0.0) * ROW_GAP;
    let width = MARGIN * 2.0 + n_layers as f64 * NODE_W + (n_layers as f64 - 1.0).max(0.0) * COL_GAP;
    let mut pos: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (l, col) in rows.iter().enumerate() {
        let col_h = col.len() as f64 * NODE_H + (col.len() as f64 - 1.0).max(0.0) * ROW_GAP;
        let top = (height - col_h) / 2.0;
        for (i, n) in col.iter().enumerate() {
            pos.insert(n.clone(), (MARGIN + l as f64 * (NODE_W + COL_GAP), top + i as f64 * (NODE_H + ROW_GAP)));
        }
    }
    let range_s = range.len_ns() as f64 / 1e9;
    let max_calls = edges.iter().map(|e| e.calls).fold(1.0, f64::max);
    let edge_views = edges
        .iter()
        .map(|e| {
            let (sx, sy) = pos[&e.client];
            let (tx, ty) = pos[&e.server];
            let path = if e.client == e.server {
                // a loop above the node
                let (x, y) = (sx + NODE_W * 0.65, sy);
                format!(
                    "M{x:.1},{y:.1} C{:.1},{:.1} {:.1},{:.1} {:.1},{y:.1}",
                    x,
                    y - 30.0,
                    x + 30.0,
                    y - 30.0,
                    x + 25.0
                )
            } else if tx > sx {
                let (x1, y1, x2, y2) = (sx + NODE_W, sy + NODE_H / 2.0, tx, ty + NODE_H / 2.0);
                let mid = (x1 + x2) / 2.0;
                format!("M{x1:.1},{y1:.1} C{mid:.1},{y1:.1} {mid:.1},{y2:.1} {x2:.1},{y2:.1}")
            } else {
                // back edge (cycle or same layer): leave from the bottom, come in from below
                let (x1, y1, x2, y2) = (sx + NODE_W / 2.0, sy + NODE_H, tx + NODE_W / 2.0 + 12.0, ty + NODE_H);
                let dip = y1.max(y2) + 40.0;
                format!("M{x1:.1},{y1:.1} C{x1:.1},{dip:.1} {x2:.1},{dip:.1} {x2:.1},{y2:.1}")
            };
            let err = if e.calls > 0.0 { e.failed / e.calls } else { 0.0 };
            let kind = match e.connection_type.as_str() {
                "" => String::new(),
                t => format!(" ({t})"),
            };
            EdgeView {
                path,
                width: format!("{:.1}", 1.0 + 6.0 * (e.calls / max_calls).sqrt()),
                class: edge_class(err),
                title: format!(
                    "{} → {}{kind}: {} calls ({}), {} failed ({})",
                    e.client,
                    e.server,
                    fmt::count(e.calls.round() as u64),
                    fmt::rate(e.calls / range_s),
                    fmt::count(e.failed.round() as u64),
                    fmt::percent(err)
                ),
            }
        })
        .collect();
    let pairs = range.pairs();
    let node_views = pos
        .iter()
        .map(|(n, &(x, y))| {
            let incoming: f64 = edges.iter().filter(|e| &e.server == n).map(|e| e.calls).sum();
            let failed: f64 = edges.iter().filter(|e| &e.server == n).map(|e| e.failed).sum();
            let outgoing: f64 = edges.iter().filter(|e| &e.client == n).map(|e| e.calls).sum();
            let database = edges.iter().any(|e| &e.server == n && e.connection_type == "database")
                && !edges.iter().any(|e| &e.client == n);
            let figures = if database {
                format!("database · {} in", fmt::rate(incoming / range_s))
            } else if incoming > 0.0 {
                format!("{} in · {} err", fmt::rate(incoming / range_s), fmt::percent(failed / incoming))
            } else {
                format!("{} out", fmt::rate(outgoing / range_s))
            };
            NodeView {
                class: svc_class(n),
                href: url("/services", pairs.iter().map(|(k, v)| (*k, v.as_str())).chain([("service", n.as_str())])),
                x: format!("{x:.1}"),
                y: format!("{y:.1}"),
                text_x: format!("{:.1}", x + 12.0),
                text_y: format!("{:.1}", y + 18.0),
                sub_y: format!("{:.1}", y + 34.0),
                title: format!(
                    "{n}: {} calls received, {} failed, {} calls made",
                    fmt::count(incoming.round() as u64),
                    fmt::count(failed.round() as u64),
                    fmt::count(outgoing.round() as u64)
                ),
                figures,
                database,
                name: n.clone(),
            }
        })
        .collect();
    (node_views, edge_views, width, height)
}

async fn page(State(state): State<AppState>, Query(params): Query<Params>) -> Result<Response, UiError> {
    let range = params.range.parse("1h").map_err(UiError::bad_request)?;
    let mut edges = metric_edges(&state, range.time).await?;
    let mut source = "service graph metrics";
    if edges.is_empty() {
        source = "spans (no service graph metrics in this range)";
        edges = state
            .query
            .dependencies(range.time)
            .await?
            .into_iter()
            .map(|d| Edge {
                client: d.parent,
                server: d.child,
                calls: d.call_count as f64,
                failed: d.error_count as f64,
                connection_type: String::new(),
            })
            .collect();
    }
    let (nodes, edges, width, height) = layout_graph(&edges, &range);
    let layout = Layout::new("Service map", Nav::Map, &[]);
    Ok(render(&MapPage {
        layout,
        range,
        source,
        nodes,
        edges,
        width: format!("{width:.0}"),
        height: format!("{height:.0}"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(c: &str, s: &str, calls: f64) -> Edge {
        Edge { client: c.into(), server: s.into(), calls, failed: 0.0, connection_type: String::new() }
    }

    #[test]
    fn layers_follow_call_depth_and_survive_cycles() {
        let edges = vec![
            e("front", "api", 10.0),
            e("api", "db", 5.0),
            e("api", "cache", 5.0),
            e("x", "y", 1.0),
            e("y", "x", 1.0),
        ];
        let nodes: BTreeSet<String> = edges.iter().flat_map(|e| [e.client.clone(), e.server.clone()]).collect();
        let l = layers(&nodes, &edges);
        assert_eq!((l["front"], l["api"], l["db"], l["cache"]), (0, 1, 2, 2));
        assert_eq!((l["x"], l["y"]), (0, 1), "a pure cycle starts at its first name");
    }

    #[test]
    fn layout_is_deterministic_and_scales_edges() {
        let range = RangeParams { range: Some("1h".into()), ..RangeParams::default() }.parse("1h").unwrap();
        let edges = vec![e("front", "api", 100.0), e("api", "db", 1.0)];
        let (n1, e1, w, _) = layout_graph(&edges, &range);
        let (n2, _, _, _) = layout_graph(&edges, &range);
        assert_eq!(
            n1.iter().map(|n| (&n.x, &n.y)).collect::<Vec<_>>(),
            n2.iter().map(|n| (&n.x, &n.y)).collect::<Vec<_>>()
        );
        assert_eq!(w, MARGIN * 2.0 + 3.0 * NODE_W + 2.0 * COL_GAP);
        assert_eq!(e1[0].width, "7.0");
        assert_eq!(e1[1].width, "1.6");
        assert_eq!(edge_class(0.5), "edge err");
        assert_eq!(edge_class(0.0), "edge ok");
    }
}
