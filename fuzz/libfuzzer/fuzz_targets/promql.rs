#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    obsbox_query_ui::fuzz::promql(data);
});
