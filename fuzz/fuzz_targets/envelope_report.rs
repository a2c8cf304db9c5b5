//! Input as a TLV payload, typed-decoded as a fixed message type; see `envelope_round_trip`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::envelope::mt;

fuzz_target!(|data: &[u8]| shared_fuzz::envelope_round_trip(mt::REPORT, data));
