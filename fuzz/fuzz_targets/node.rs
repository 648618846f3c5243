#![no_main]
//! libFuzzer entry for the `node` target of `norn_node::fuzz` (see its docs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // A panic is the finding; `run_one` only errs for an unknown target name.
    norn_node::fuzz::run_one("node", data).expect("a known target");
});
