//! Ghost admin NDJSON: `BoundedLines` (whole vs. chunked) and `parse_request` per line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shared_fuzz::control::admin_line(data));
