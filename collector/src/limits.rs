//! [`Limits`]: the bounds every OTLP input is checked against.

use serde::{Deserialize, Serialize};

use crate::CollectorError;

const MIB: usize = 1024 * 1024;

/// Limits on every input.
///
/// Deserialized from configuration (unknown keys are an error, missing keys take their
/// default) and checked once by [`Limits::validate`] when the [`Collector`](crate::Collector)
/// is created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body as received (before decompression) for OTLP/HTTP, and largest gRPC
    /// message as received. Default 8 MiB. Larger: HTTP 413, gRPC `RESOURCE_EXHAUSTED`.
    pub max_body_bytes: usize,
    /// Largest decompressed request. Inflation stops after this many bytes, so a gzip bomb
    /// costs no more memory than this. Default 32 MiB. Larger: HTTP 413, gRPC
    /// `RESOURCE_EXHAUSTED` (or `OUT_OF_RANGE` when the gRPC frame header already says so).
    pub max_decompressed_bytes: usize,
    /// Most spans, log records or metric data points in one request. Default 100,000. More:
    /// the whole request is refused with HTTP 400 / gRPC `INVALID_ARGUMENT`.
    pub max_items_per_request: usize,
    /// Most attributes on one span, log record or data point (its own, not those of its
    /// events or links). Default 256. More: that item is rejected (partial success).
    pub max_attributes_per_item: usize,
    /// Longest string or bytes attribute value (also keys, and values nested in arrays and
    /// key-value lists). Default 64 KiB. Longer: that item is rejected (partial success).
    pub max_attribute_value_bytes: usize,
    /// Bytes of requests being received, decoded and written at once, counted as received
    /// plus, for compressed bodies, decompressed. Default 64 MiB; at most `u32::MAX`. A request
    /// that does not fit is refused at once with HTTP 429 + `Retry-After` / gRPC
    /// `RESOURCE_EXHAUSTED` with retry information.
    pub max_inflight_bytes: usize,
    /// Size of the bounded pool that inflates and decodes requests. Default: number of CPUs.
    pub decode_threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 8 * MIB,
            max_decompressed_bytes: 32 * MIB,
            max_items_per_request: 100_000,
            max_attributes_per_item: 256,
            max_attribute_value_bytes: 64 * 1024,
            max_inflight_bytes: 64 * MIB,
            decode_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl Limits {
    /// Checks the limits for consistency; the error names the offending key.
    pub fn validate(&self) -> Result<(), CollectorError> {
        let bad = |key: &'static str, reason: String| Err(CollectorError::InvalidLimits { key, reason });
        for (key, value) in [
            ("max_body_bytes", self.max_body_bytes),
            ("max_decompressed_bytes", self.max_decompressed_bytes),
            ("max_items_per_request", self.max_items_per_request),
            ("max_attributes_per_item", self.max_attributes_per_item),
            ("max_attribute_value_bytes", self.max_attribute_value_bytes),
            ("max_inflight_bytes", self.max_inflight_bytes),
            ("decode_threads", self.decode_threads),
        ] {
            if value == 0 {
                return bad(key, "must be greater than 0".into());
            }
        }
        if self.max_decompressed_bytes < self.max_body_bytes {
            return bad("max_decompressed_bytes", format!("must be at least max_body_bytes ({})", self.max_body_bytes));
        }
        if self.max_inflight_bytes > u32::MAX as usize {
            return bad("max_inflight_bytes", format!("must be at most {}", u32::MAX));
        }
        let largest_request = self.max_body_bytes.saturating_add(self.max_decompressed_bytes);
        if self.max_inflight_bytes < largest_request {
            return bad(
                "max_inflight_bytes",
                format!(
                    "must be at least max_body_bytes + max_decompressed_bytes ({largest_request}), \
                     or the largest allowed request could never be accepted"
                ),
            );
        }
        if self.decode_threads > 1024 {
            return bad("decode_threads", "must be at most 1024".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Limits::default().validate().expect("defaults validate");
    }

    #[test]
    fn missing_keys_take_defaults() {
        let limits: Limits = serde_json::from_str(r#"{"max_body_bytes": 1024}"#).expect("parses");
        assert_eq!(limits.max_body_bytes, 1024);
        assert_eq!(limits.max_items_per_request, Limits::default().max_items_per_request);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_str::<Limits>(r#"{"max_body_byte": 1024}"#).unwrap_err();
        assert!(err.to_string().contains("max_body_byte"), "{err}");
    }

    #[test]
    fn validate_names_the_bad_key() {
        let cases = [
            (Limits { decode_threads: 0, ..Limits::default() }, "decode_threads"),
            (Limits { max_attributes_per_item: 0, ..Limits::default() }, "max_attributes_per_item"),
            (Limits { max_decompressed_bytes: 1024, ..Limits::default() }, "max_decompressed_bytes"),
            (Limits { max_inflight_bytes: 1024, ..Limits::default() }, "max_inflight_bytes"),
            (Limits { max_inflight_bytes: u32::MAX as usize + 1, ..Limits::default() }, "max_inflight_bytes"),
        ];
        for (limits, key) in cases {
            let err = limits.validate().unwrap_err();
            assert!(matches!(err, CollectorError::InvalidLimits { key: k, .. } if k == key), "{err}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}
