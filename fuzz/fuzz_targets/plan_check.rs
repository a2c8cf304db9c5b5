//! The plan validator (`submit_check`) and plan state machine on a fuzzed fleet and script.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shared_fuzz::control::plan_check(data));
