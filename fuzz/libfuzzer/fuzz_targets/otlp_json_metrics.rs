#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    obsbox_collector::fuzz::otlp(obsbox_storage::Signal::Metrics, true, data);
});
