//! `parse_registration` and `parse_registration_ack` over the input as one line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shared_fuzz::handshake_line(data));
