//! Pure pieces of event ingest: the ack an event gets, and the plan input it becomes.

use shared::envelope::{AckStatus, Event, EventAck};

use crate::plan::{Input, Output};

pub fn ack(e: &Event, ghost: &str, status: AckStatus, code: u32, now: u64) -> EventAck {
    EventAck {
        event_id: e.event_id.clone(),
        command_id: e.command_id.clone(),
        ghost_id: ghost.to_owned(),
        ack_status: status,
        ack_code: code,
        timestamp_ms: now,
        extra: vec![],
    }
}

/// Why an event failed, in the words the Ghost gave: its refusal, else the seed's stderr
/// (bounded) and a non-zero exit code.
pub fn failure_reason(e: &Event) -> Option<String> {
    const MAX: usize = 512;
    if let Some(r) = &e.error_reason {
        return Some(r.clone());
    }
    let mut text = e
        .stderr
        .as_ref()
        .map(|s| String::from_utf8_lossy(s).trim().to_owned())
        .unwrap_or_default();
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    match (text.is_empty(), e.exit_code.filter(|c| *c != 0)) {
        (true, None) => None,
        (true, Some(c)) => Some(format!("exit code {c}")),
        (false, None) => Some(text),
        (false, Some(c)) => Some(format!("{text} (exit code {c})")),
    }
}

/// The plan input a command's event becomes.
pub fn plan_input(e: &Event, ghost: &str) -> Input {
    Input::Event {
        ghost: ghost.to_owned(),
        command_id: e.command_id.clone(),
        event_id: e.event_id.clone(),
        outcome: e.outcome,
        reason: failure_reason(e),
        output: Output::from_bytes(e.stdout.as_deref(), e.stderr.as_deref(), e.exit_code)
            .map(Box::new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::envelope::Outcome;

    fn ev() -> Event {
        Event::new("e", "c", "i", "g", "seed.kv", Outcome::Error)
    }

    #[test]
    fn a_failure_names_the_seeds_words_and_exit_code() {
        let mut e = ev();
        assert_eq!(failure_reason(&e), None);
        e.exit_code = Some(1);
        assert_eq!(failure_reason(&e).as_deref(), Some("exit code 1"));
        e.stderr = Some(bytes::Bytes::from_static(b"missing key=k\n"));
        assert_eq!(
            failure_reason(&e).as_deref(),
            Some("missing key=k (exit code 1)")
        );
        e.error_reason = Some("stale lock_token".into());
        assert_eq!(failure_reason(&e).as_deref(), Some("stale lock_token"));
        let mut long = ev();
        long.stderr = Some(bytes::Bytes::from("é".repeat(1000)));
        let r = failure_reason(&long).unwrap_or_default();
        assert!(
            r.len() <= 512 + '…'.len_utf8() && r.ends_with('…'),
            "{}",
            r.len()
        );
    }
}
