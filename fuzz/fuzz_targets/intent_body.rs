//! `POST /v1/intents` bodies (TOML or JSON) through `mirage::intent::parse`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shared_fuzz::control::intent_body(data));
