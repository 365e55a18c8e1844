#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mail_trace_fuzz::run("chunking", data);
});
