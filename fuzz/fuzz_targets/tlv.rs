//! `tlv::decode`; whatever decodes re-encodes to exactly the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shared_fuzz::tlv_round_trip(data));
