//! A trace-id filter: a Bloom filter over the distinct trace ids of a segment. It answers
//! "certainly not here" so that a trace by id skips what cannot hold it, where a trace id
//! carries no time to narrow the search by. Two users:
//! - the store keeps one in memory per large tantivy segment of a span or log index
//!   (`segments::Layout`), so a trace lookup searches only the tantivy segments that may hold it;
//! - a cluster's metastore keeps one per shipped traces segment (`obsbox-cluster`), so a searcher
//!   downloads only the segments that may hold it.
//!
//! Hand-written rather than taken from a crate because its bytes live in the metastore for the
//! data's whole retention: the format must not change with a dependency's version. Format
//! (base64 in the entry's `trace_filter`): byte 0 = format (1), byte 1 = `k` (hash count), then
//! the bit array as little-endian `u64` words. Bit positions: `h1 + i * h2 mod m` for `i < k`
//! (double hashing), `h1`/`h2` from splitmix64 over the id's two 8-byte halves. At 10 bits per
//! id and `k` = 7 about 1% of the segments without the trace are read anyway; none that hold it
//! is ever skipped.

use base64::Engine;

const FORMAT: u8 = 1;
const BITS_PER_ID: usize = 10;
const HASHES: u8 = 7;

/// A built or decoded filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceFilter {
    k: u8,
    words: Vec<u64>,
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hashes(id: &[u8]) -> (u64, u64) {
    let mut halves = [0u64; 2];
    for (i, chunk) in id.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        halves[i % 2] ^= u64::from_le_bytes(word).rotate_left(17 * (i as u32 / 2));
    }
    let h1 = mix(halves[0] ^ mix(halves[1] ^ id.len() as u64));
    let h2 = mix(h1 ^ halves[1]) | 1;
    (h1, h2)
}

impl TraceFilter {
    /// A filter holding `ids`.
    pub fn build<'a>(ids: impl ExactSizeIterator<Item = &'a [u8]>) -> TraceFilter {
        let mut filter = TraceFilter::with_capacity(ids.len());
        for id in ids {
            filter.insert(id);
        }
        filter
    }

    /// An empty filter sized for `ids` ids: [`TraceFilter::insert`] more and it says "maybe"
    /// more often, never "no" to an id inserted.
    pub fn with_capacity(ids: usize) -> TraceFilter {
        TraceFilter { k: HASHES, words: vec![0; TraceFilter::bytes_for(ids) / 8] }
    }

    /// The [`TraceFilter::bytes`] of a filter sized for `ids` ids.
    pub fn bytes_for(ids: usize) -> usize {
        ids.saturating_mul(BITS_PER_ID).max(64).div_ceil(64) * 8
    }

    /// Adds `id`.
    pub fn insert(&mut self, id: &[u8]) {
        for p in self.positions(id) {
            self.words[p / 64] |= 1 << (p % 64);
        }
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    fn positions(&self, id: &[u8]) -> impl Iterator<Item = usize> + use<> {
        let m = (self.words.len() * 64) as u64;
        let (h1, h2) = hashes(id);
        (0..u64::from(self.k)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    /// False only when `id` is certainly not in the segment.
    pub fn may_contain(&self, id: &[u8]) -> bool {
        self.positions(id).all(|p| self.words[p / 64] & (1 << (p % 64)) != 0)
    }

    /// The entry's text form.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(2 + self.words.len() * 8);
        bytes.extend([FORMAT, self.k]);
        for w in &self.words {
            bytes.extend(w.to_le_bytes());
        }
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// Reads [`TraceFilter::encode`]'s text; `None` when it is not a filter this build reads (the
    /// searcher then reads the segment, as without a filter).
    pub fn decode(text: &str) -> Option<TraceFilter> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
        match bytes.as_slice() {
            [FORMAT, k @ 1..=32, rest @ ..] if !rest.is_empty() && rest.len() % 8 == 0 => Some(TraceFilter {
                k: *k,
                words: rest.chunks(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Vec<u8> {
        let mut v = mix(n).to_be_bytes().to_vec();
        v.extend(mix(n ^ 0xdead).to_be_bytes());
        v
    }

    #[test]
    fn never_says_no_to_an_id_it_holds_and_rarely_yes_to_others() {
        let held: Vec<Vec<u8>> = (0..10_000).map(id).collect();
        let filter = TraceFilter::build(held.iter().map(Vec::as_slice));
        assert!(held.iter().all(|i| filter.may_contain(i)));
        let false_positives = (10_000..110_000).filter(|&n| filter.may_contain(&id(n))).count();
        assert!(false_positives < 2_000, "{false_positives} of 100000 (expected about 1%)");
        // Sequential ids (some SDKs' test generators) spread as well.
        let seq: Vec<Vec<u8>> = (0..5_000u128).map(|n| n.to_be_bytes().to_vec()).collect();
        let filter = TraceFilter::build(seq.iter().map(Vec::as_slice));
        assert!(seq.iter().all(|i| filter.may_contain(i)));
        let fp = (5_000..105_000u128).filter(|n| filter.may_contain(&n.to_be_bytes())).count();
        assert!(fp < 2_000, "{fp} of 100000");
    }

    #[test]
    fn survives_its_text_form_and_refuses_what_it_cannot_read() {
        let held: Vec<Vec<u8>> = (0..100).map(id).collect();
        let filter = TraceFilter::build(held.iter().map(Vec::as_slice));
        let back = TraceFilter::decode(&filter.encode()).unwrap();
        assert_eq!(back, filter);
        assert!(held.iter().all(|i| back.may_contain(i)));
        let empty = TraceFilter::build(std::iter::empty());
        assert!(!empty.may_contain(&id(1)));
        for bad in ["", "!!", "AgcAAAAAAAAAAA==", "AQcAAAA=", "AQAAAAAAAAAAAA=="] {
            assert_eq!(TraceFilter::decode(bad), None, "{bad}");
        }
    }
}
