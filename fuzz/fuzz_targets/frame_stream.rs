//! The frame codec over the input split in two at a point taken from its first byte; every
//! frame then goes through `Envelope::from_frame`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shared_fuzz::frame_stream(data));
