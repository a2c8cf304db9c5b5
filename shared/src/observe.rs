//! Observations: state a seed publishes without being asked, carried as ordinary `event`
//! frames (docs/SEEDS.md, docs/DECISIONS.md). Naming, so any Mirage can tell them apart:
//!
//! - `intent_id` = [`INTENT`] (`intent.observe`), `event_id` = `evt.observe.<ghost>.<seed>.<ms>.<n>`,
//!   `command_id` = `cmd.observe.<seed>.<ms>.<n>`, `seed_id` = the seed, `outcome` = success,
//!   `status` = `observed`, `stdout` = the state as a JSON object of strings.
//!
//! A Go Mirage matches no command to such an event, so it records and acks it like any
//! unmatched event; this Mirage keeps the latest per ghost/seed and never routes it to a plan.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::envelope::{Event, Outcome};

pub const INTENT: &str = "intent.observe";
pub const EVENT_PREFIX: &str = "evt.observe.";
pub const STATUS: &str = "observed";
/// Bounds on one observation (checked where it is made and where it is read).
pub const MAX_KEYS: usize = 32;
pub const MAX_KEY_BYTES: usize = 64;
pub const MAX_VALUE_BYTES: usize = 1024;

/// Checks an observation's state against the bounds, naming what is wrong.
pub fn validate(state: &BTreeMap<String, String>) -> Result<(), String> {
    if state.is_empty() {
        return Err("observation has no keys".into());
    }
    if state.len() > MAX_KEYS {
        return Err(format!(
            "observation has {} keys; at most {MAX_KEYS}",
            state.len()
        ));
    }
    for (k, v) in state {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_KEY_BYTES
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !key_ok {
            return Err(format!(
                "observation key {k:?} must be 1..={MAX_KEY_BYTES} of [A-Za-z0-9_.-]"
            ));
        }
        if v.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "observation value of {k:?} is {} bytes; at most {MAX_VALUE_BYTES}",
                v.len()
            ));
        }
    }
    Ok(())
}

/// The event that carries one observation. `n` makes ids unique within a millisecond.
pub fn event(
    ghost_id: &str,
    seed_id: &str,
    state: &BTreeMap<String, String>,
    at_ms: u64,
    n: u64,
) -> Event {
    let mut e = Event::new(
        format!("{EVENT_PREFIX}{ghost_id}.{seed_id}.{at_ms}.{n}"),
        format!("cmd.observe.{seed_id}.{at_ms}.{n}"),
        INTENT,
        ghost_id,
        seed_id,
        Outcome::Success,
    );
    e.timestamp_ms = Some(at_ms);
    e.status = Some(STATUS.into());
    e.exit_code = Some(0);
    e.stdout = Some(Bytes::from(serde_json::to_vec(state).unwrap_or_default()));
    e
}

pub fn is_observation(e: &Event) -> bool {
    e.intent_id == INTENT && e.event_id.starts_with(EVENT_PREFIX)
}

/// The state an observation event carries, validated.
pub fn state_of(e: &Event) -> Result<BTreeMap<String, String>, String> {
    let body = e.stdout.as_deref().unwrap_or_default();
    let state: BTreeMap<String, String> = serde_json::from_slice(body).map_err(|err| {
        format!(
            "observation {}: stdout is not a JSON object of strings: {err}",
            e.event_id
        )
    })?;
    validate(&state).map_err(|err| format!("observation {}: {err}", e.event_id))?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_naming() {
        let s: BTreeMap<String, String> = [("state".to_owned(), "running".to_owned())].into();
        let e = event("g1", "seed.service", &s, 1234, 7);
        assert_eq!(e.event_id, "evt.observe.g1.seed.service.1234.7");
        assert!(is_observation(&e));
        assert_eq!(state_of(&e).unwrap(), s);
        let mut cmd = e.clone();
        cmd.intent_id = "i1".into();
        assert!(!is_observation(&cmd));
    }

    #[test]
    fn bounds_are_named() {
        let big: BTreeMap<String, String> =
            [("k".to_owned(), "x".repeat(MAX_VALUE_BYTES + 1))].into();
        assert!(validate(&big).unwrap_err().contains("\"k\""));
        let bad: BTreeMap<String, String> = [("a b".to_owned(), "1".to_owned())].into();
        assert!(validate(&bad).unwrap_err().contains("a b"));
        assert!(validate(&BTreeMap::new()).is_err());
        let many: BTreeMap<String, String> = (0..=MAX_KEYS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(validate(&many).is_err());
    }
}
