//! Heartbeat naming and session liveness (PROTOCOL.md §1), sans I/O.
//!
//! A heartbeat is an ordinary `event` whose ids follow a fixed pattern, so an edgectl Mirage
//! acks it like any event; both sides recognise it by the same two checks here.

use std::time::{Duration, Instant};

use crate::envelope::{Event, Outcome};

pub const HEARTBEAT_INTENT: &str = "intent.session.heartbeat";
pub const HEARTBEAT_SEED: &str = "seed.session";
const EVENT_PREFIX: &str = "evt.session.";

/// Heartbeat number `seq` of `ghost_id`, stamped `now_ms`.
pub fn heartbeat_event(ghost_id: &str, seq: u64, now_ms: u64) -> Event {
    let mut ev = Event::new(
        format!("{EVENT_PREFIX}{ghost_id}.{seq}"),
        format!("cmd.session.heartbeat.{seq}"),
        HEARTBEAT_INTENT,
        ghost_id.to_owned(),
        HEARTBEAT_SEED,
        Outcome::Success,
    );
    ev.timestamp_ms = Some(now_ms);
    ev
}

/// Mirage's side: this event is a heartbeat (liveness only, not stored).
pub fn is_heartbeat(e: &Event) -> bool {
    e.intent_id == HEARTBEAT_INTENT && e.event_id.starts_with(EVENT_PREFIX)
}

/// The Ghost's side: this `event.ack` answers a heartbeat (nothing to take off the outbox).
pub fn is_heartbeat_ack(event_id: &str) -> bool {
    event_id.starts_with(EVENT_PREFIX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// The peer spoke recently: send the next heartbeat.
    Heartbeat,
    /// Nothing from the peer for `silent`: the session is dead.
    Dead { silent: Duration },
}

/// When the peer last spoke, and how long a silence kills the session.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    last_rx: Instant,
    dead_after: Duration,
}

impl Liveness {
    pub fn new(now: Instant, dead_after: Duration) -> Liveness {
        Liveness {
            last_rx: now,
            dead_after,
        }
    }

    /// A frame arrived at `now`.
    pub fn on_frame(&mut self, now: Instant) {
        self.last_rx = self.last_rx.max(now);
    }

    /// The heartbeat timer fired at `now`.
    pub fn on_tick(&self, now: Instant) -> Tick {
        let silent = now.saturating_duration_since(self.last_rx);
        if silent > self.dead_after {
            Tick::Dead { silent }
        } else {
            Tick::Heartbeat
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_recognised_by_both_sides() {
        let e = heartbeat_event("g-1", 7, 1234);
        assert_eq!(e.event_id, "evt.session.g-1.7");
        assert_eq!(e.command_id, "cmd.session.heartbeat.7");
        assert_eq!(e.timestamp_ms, Some(1234));
        assert!(is_heartbeat(&e));
        assert!(is_heartbeat_ack(&e.event_id));
        // A real event of a command is neither, even with a look-alike id.
        let mut real = e.clone();
        real.intent_id = "intent.1".into();
        assert!(!is_heartbeat(&real));
        assert!(!is_heartbeat_ack("evt.cmd.1"));
    }

    #[test]
    fn silence_longer_than_dead_after_kills_the_session() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, Duration::from_millis(300));
        assert_eq!(l.on_tick(t0 + Duration::from_millis(300)), Tick::Heartbeat);
        assert_eq!(
            l.on_tick(t0 + Duration::from_millis(301)),
            Tick::Dead {
                silent: Duration::from_millis(301)
            }
        );
        l.on_frame(t0 + Duration::from_millis(200));
        assert_eq!(l.on_tick(t0 + Duration::from_millis(450)), Tick::Heartbeat);
        // A frame stamped earlier than the last one does not move liveness back.
        l.on_frame(t0);
        assert_eq!(l.on_tick(t0 + Duration::from_millis(450)), Tick::Heartbeat);
    }
}
