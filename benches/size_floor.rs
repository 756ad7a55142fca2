//! The floor under the stored-size targets: how small the benchmark's spans and log records get
//! with no index at all, so that the bytes per item the store reaches (`index_cost`, `ingest`)
//! can be read against what the data itself holds.
//!
//! ```text
//! cargo bench --bench size_floor -- spans 200     # the 200 batches index_cost writes
//! cargo bench --bench size_floor -- logs 200
//! ```
//!
//! Three layouts of the same items, none of them searchable except by scanning:
//! - raw: the OTLP requests as encoded;
//! - row: every request encoded back to back, compressed as one stream (zstd level 19, 128 MiB
//!   long-distance window): a bound for any layout that keeps items whole;
//! - columnar, as Tempo's Parquet blocks: items sorted (spans by trace id then start, log records
//!   by resource then time), each field its own column (ids raw, times as deltas, each attribute
//!   key a column with a presence bitmap, resources and scopes as a table plus an id per item),
//!   each column compressed alone at zstd level 3 and level 19.

mod payload;

use std::collections::{BTreeMap, HashMap};

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use payload::{ITEMS_PER_BATCH, log_batch, now_ns, span_batch};
use prost::Message;

/// Named columns of bytes, plus per-key presence bitmaps for attributes.
#[derive(Default)]
struct Columns {
    cols: BTreeMap<String, Vec<u8>>,
    present: BTreeMap<String, Vec<bool>>,
    rows: usize,
}

impl Columns {
    fn col(&mut self, name: &str) -> &mut Vec<u8> {
        self.cols.entry(name.to_string()).or_default()
    }

    fn varint(&mut self, name: &str, mut v: u64) {
        let c = self.col(name);
        while v >= 0x80 {
            c.push(v as u8 | 0x80);
            v >>= 7;
        }
        c.push(v as u8);
    }

    fn signed(&mut self, name: &str, v: i64) {
        self.varint(name, ((v << 1) ^ (v >> 63)) as u64);
    }

    fn bytes(&mut self, name: &str, b: &[u8]) {
        self.varint(name, b.len() as u64);
        self.col(name).extend_from_slice(b);
    }

    /// One row's attributes: a column per key (value by type) and a presence bit per key.
    fn attrs(&mut self, prefix: &str, attrs: &[KeyValue]) {
        for kv in attrs {
            let name = format!("{prefix}.{}", kv.key);
            let bits = self.present.entry(name.clone()).or_default();
            bits.resize(self.rows, false);
            bits.push(true);
            match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => self.bytes(&name, s.as_bytes()),
                Some(Value::IntValue(i)) => self.signed(&name, *i),
                Some(Value::DoubleValue(f)) => self.col(&name).extend_from_slice(&f.to_le_bytes()),
                Some(Value::BoolValue(b)) => self.col(&name).push(*b as u8),
                _ => {
                    let v = kv.value.clone().unwrap_or_default().encode_to_vec();
                    self.bytes(&name, &v);
                }
            }
        }
    }

    fn end_row(&mut self) {
        self.rows += 1;
    }

    /// Compressed size of every column at `level`, bitmaps packed 8 rows per byte.
    fn compressed(&self, level: i32) -> anyhow::Result<BTreeMap<String, usize>> {
        let mut out = BTreeMap::new();
        for (name, c) in &self.cols {
            out.insert(name.clone(), zstd::bulk::compress(c, level)?.len());
        }
        for (name, bits) in &self.present {
            let mut packed = vec![0u8; self.rows.div_ceil(8)];
            for (i, b) in bits.iter().enumerate() {
                packed[i / 8] |= (*b as u8) << (i % 8);
            }
            *out.entry(name.clone()).or_default() += zstd::bulk::compress(&packed, level)?.len();
        }
        Ok(out)
    }
}

/// Distinct encoded values (resources, scopes) and the id of each.
#[derive(Default)]
struct Table {
    ids: HashMap<Vec<u8>, u64>,
    bytes: usize,
}

impl Table {
    fn id(&mut self, encoded: Vec<u8>) -> u64 {
        let n = self.ids.len() as u64;
        let len = encoded.len();
        *self.ids.entry(encoded).or_insert_with(|| {
            self.bytes += len;
            n
        })
    }
}

fn span_columns(spans: &mut [(Span, u64, u64)]) -> Columns {
    spans.sort_by(|a, b| (&a.0.trace_id, a.0.start_time_unix_nano).cmp(&(&b.0.trace_id, b.0.start_time_unix_nano)));
    let mut c = Columns::default();
    let (mut prev_trace, mut run, mut prev_start) = (Vec::new(), 0u64, 0u64);
    for (span, res, scope) in spans.iter() {
        // Runs of one trace id: the id once and the run length (Parquet's dictionary + RLE).
        if span.trace_id != prev_trace {
            if run > 0 {
                c.varint("trace_id.run", run);
            }
            c.col("trace_id").extend_from_slice(&span.trace_id);
            prev_trace = span.trace_id.clone();
            run = 0;
        }
        run += 1;
        c.col("span_id").extend_from_slice(&span.span_id);
        c.bytes("parent_span_id", &span.parent_span_id);
        c.signed("start", span.start_time_unix_nano.wrapping_sub(prev_start) as i64);
        prev_start = span.start_time_unix_nano;
        c.varint("duration", span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano));
        c.bytes("name", span.name.as_bytes());
        c.varint("kind", span.kind as u64);
        let status = span.status.clone().unwrap_or_default();
        c.varint("status.code", status.code as u64);
        c.bytes("status.message", status.message.as_bytes());
        c.varint("flags", span.flags as u64);
        c.varint("resource", *res);
        c.varint("scope", *scope);
        c.attrs("attr", &span.attributes);
        let rest = Span {
            events: span.events.clone(),
            links: span.links.clone(),
            dropped_attributes_count: span.dropped_attributes_count,
            dropped_events_count: span.dropped_events_count,
            dropped_links_count: span.dropped_links_count,
            trace_state: span.trace_state.clone(),
            ..Default::default()
        };
        c.bytes("events+links", &rest.encode_to_vec());
        c.end_row();
    }
    c.varint("trace_id.run", run);
    c
}

fn log_columns(records: &mut [(LogRecord, u64, u64)]) -> Columns {
    records.sort_by_key(|(r, res, _)| (*res, r.time_unix_nano));
    let mut c = Columns::default();
    let mut prev_time = 0u64;
    for (r, res, scope) in records.iter() {
        c.signed("time", r.time_unix_nano.wrapping_sub(prev_time) as i64);
        prev_time = r.time_unix_nano;
        c.signed("observed_time", r.observed_time_unix_nano.wrapping_sub(r.time_unix_nano) as i64);
        c.varint("severity_number", r.severity_number as u64);
        c.bytes("severity_text", r.severity_text.as_bytes());
        match r.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(Value::StringValue(s)) => c.bytes("body", s.as_bytes()),
            _ => c.bytes("body", &r.body.clone().unwrap_or_else(AnyValue::default).encode_to_vec()),
        }
        c.bytes("trace_id", &r.trace_id);
        c.bytes("span_id", &r.span_id);
        c.varint("flags", r.flags as u64);
        c.varint("resource", *res);
        c.varint("scope", *scope);
        c.attrs("attr", &r.attributes);
        c.end_row();
    }
    c
}

fn main() -> anyhow::Result<()> {
    let Some((logs, batches)) = payload::signal_and_batches("size_floor")? else { return Ok(()) };
    let now = now_ns();
    let (mut resources, mut scopes) = (Table::default(), Table::default());
    let mut stream = Vec::new();
    let (mut spans, mut records) = (Vec::new(), Vec::new());
    // The same seeds and times as index_cost.
    for b in 0..batches {
        let t = now - (batches - b) * 10_000_000;
        if logs {
            let req = log_batch(0x30_0000 + b, t);
            req.encode(&mut stream)?;
            for rl in req.resource_logs {
                let res = resources.id(rl.resource.unwrap_or_default().encode_to_vec());
                for sl in rl.scope_logs {
                    let scope = scopes.id(sl.scope.unwrap_or_default().encode_to_vec());
                    records.extend(sl.log_records.into_iter().map(|r| (r, res, scope)));
                }
            }
        } else {
            let req = span_batch(0x40_0000 + b, t);
            req.encode(&mut stream)?;
            for rs in req.resource_spans {
                let res = resources.id(rs.resource.unwrap_or_default().encode_to_vec());
                for ss in rs.scope_spans {
                    let scope = scopes.id(ss.scope.unwrap_or_default().encode_to_vec());
                    spans.extend(ss.spans.into_iter().map(|s| (s, res, scope)));
                }
            }
        }
    }
    let items = batches as usize * ITEMS_PER_BATCH;
    let per = |n: usize| n as f64 / items as f64;

    let mut z = zstd::bulk::Compressor::new(19)?;
    z.long_distance_matching(true)?;
    z.window_log(27)?;
    let row = z.compress(&stream)?.len();

    let columns = if logs { log_columns(&mut records) } else { span_columns(&mut spans) };
    let tables = resources.bytes + scopes.bytes;
    let what = if logs { "log records" } else { "spans" };
    println!("{items} {what}: raw OTLP {:.1} B each", per(stream.len()));
    println!("row, whole stream at zstd 19 (long window): {:.1} B per item", per(row));
    for level in [3, 19] {
        let sizes = self::Columns::compressed(&columns, level)?;
        let total: usize = sizes.values().sum::<usize>() + tables;
        let mut top: Vec<_> = sizes.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1));
        println!(
            "columnar, each column at zstd {level}: {:.1} B per item ({} columns; resources and scopes {:.2} B); \
             largest: {}",
            per(total),
            sizes.len(),
            per(tables),
            top.iter().take(8).map(|(n, b)| format!("{n} {:.1}", per(**b))).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}
