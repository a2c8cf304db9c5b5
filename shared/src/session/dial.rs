//! The Ghost's dial / backoff / reconnect state machine (PROTOCOL.md §1), sans I/O.
//!
//! The caller owns the sockets and the timers: it feeds what happened to a dial or a session
//! ([`DialEvent`]) with a uniform sample for the jitter, and gets back what to do next
//! ([`DialAction`]). The Ghost's `MirageLink` actor and `ghost swarm` both run it, so a swarm
//! storm redials exactly as a fleet of real Ghosts would.

use std::time::Duration;

use super::Backoff;

/// A rejection adds this many attempts: retrying a rejection quickly cannot help, so the
/// next delay is the longest one.
const REJECT_PENALTY: u32 = 16;

#[derive(Debug, Clone, PartialEq)]
pub struct DialConfig {
    /// How many Mirage addresses there are (tried in order, wrapping).
    pub addresses: usize,
    pub backoff: Backoff,
    /// `policy = required`: give up (the process exits) when no Mirage was ever reached.
    pub required: bool,
    /// With `required`: failed dials before giving up (at least 1).
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialEvent {
    /// The dial, TLS or the registration exchange failed (or timed out).
    Failed,
    /// Mirage answered the registration with a rejection.
    Rejected,
    /// Registered: a session is up.
    Established,
    /// A session that was up ended (closed, dead, write failed, framing error).
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialAction {
    /// Dial address `address` (an index into the configured list) after `delay`.
    Dial { address: usize, delay: Duration },
    /// A session is up: nothing to schedule until it ends.
    Connected,
    /// `policy = required` and Mirage was never reached: stop the process.
    GiveUp(GiveUp),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// Mirage rejected the first registration.
    Rejected,
    /// `attempts` dials failed in a row before any registration.
    Unreachable { attempts: u32 },
}

#[derive(Debug, Clone)]
pub struct Dialer {
    cfg: DialConfig,
    attempt: u32,
    addr_idx: usize,
    registered_once: bool,
}

impl Dialer {
    pub fn new(cfg: DialConfig) -> Dialer {
        Dialer {
            cfg,
            attempt: 0,
            addr_idx: 0,
            registered_once: false,
        }
    }

    /// The first dial: the primary address, at once.
    pub fn start(&self) -> DialAction {
        DialAction::Dial {
            address: self.address(),
            delay: Duration::ZERO,
        }
    }

    /// The address index the next dial uses.
    pub fn address(&self) -> usize {
        self.addr_idx % self.cfg.addresses.max(1)
    }

    /// Consecutive failed attempts (a rejection counts as many).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    pub fn registered_once(&self) -> bool {
        self.registered_once
    }

    /// What to do after `ev`. `unit` is a uniform sample in [0, 1) for the jitter.
    pub fn on(&mut self, ev: DialEvent, unit: f64) -> DialAction {
        let give_up_allowed = self.cfg.required && !self.registered_once;
        match ev {
            DialEvent::Rejected => {
                if give_up_allowed {
                    return DialAction::GiveUp(GiveUp::Rejected);
                }
                self.attempt = self.attempt.saturating_add(REJECT_PENALTY);
                self.redial(true, unit)
            }
            DialEvent::Failed => {
                self.attempt = self.attempt.saturating_add(1);
                if give_up_allowed && self.attempt >= self.cfg.max_attempts.max(1) {
                    return DialAction::GiveUp(GiveUp::Unreachable {
                        attempts: self.attempt,
                    });
                }
                self.redial(true, unit)
            }
            DialEvent::Established => {
                self.attempt = 0;
                self.addr_idx %= self.cfg.addresses.max(1);
                self.registered_once = true;
                DialAction::Connected
            }
            DialEvent::Lost => {
                // Start over from the primary address after a session that worked, one
                // jittered step later so a fleet that lost Mirage together does not redial
                // in lockstep.
                self.addr_idx = 0;
                self.attempt = 1;
                self.redial(false, unit)
            }
        }
    }

    fn redial(&mut self, next_address: bool, unit: f64) -> DialAction {
        if next_address {
            self.addr_idx = self.addr_idx.wrapping_add(1);
        }
        DialAction::Dial {
            address: self.address(),
            delay: self.cfg.backoff.delay(self.attempt.max(1), unit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(addresses: usize, required: bool) -> DialConfig {
        DialConfig {
            addresses,
            backoff: Backoff {
                jitter: false,
                ..Backoff::default()
            },
            required,
            max_attempts: 3,
        }
    }

    fn delay_ms(a: DialAction) -> u64 {
        match a {
            DialAction::Dial { delay, .. } => delay.as_millis() as u64,
            other => panic!("expected a dial, got {other:?}"),
        }
    }

    #[test]
    fn failures_rotate_addresses_and_grow_the_delay() {
        let mut d = Dialer::new(cfg(2, false));
        assert_eq!(
            d.start(),
            DialAction::Dial {
                address: 0,
                delay: Duration::ZERO
            }
        );
        let a1 = d.on(DialEvent::Failed, 0.0);
        let a2 = d.on(DialEvent::Failed, 0.0);
        let a3 = d.on(DialEvent::Failed, 0.0);
        assert_eq!(
            [a1, a2, a3],
            [
                DialAction::Dial {
                    address: 1,
                    delay: Duration::from_millis(250)
                },
                DialAction::Dial {
                    address: 0,
                    delay: Duration::from_millis(500)
                },
                DialAction::Dial {
                    address: 1,
                    delay: Duration::from_millis(1000)
                },
            ]
        );
    }

    #[test]
    fn a_lost_session_redials_the_primary_one_step_later() {
        let mut d = Dialer::new(cfg(3, false));
        d.on(DialEvent::Failed, 0.0);
        assert_eq!(d.on(DialEvent::Established, 0.0), DialAction::Connected);
        assert_eq!(d.attempt(), 0);
        assert_eq!(
            d.on(DialEvent::Lost, 0.0),
            DialAction::Dial {
                address: 0,
                delay: Duration::from_millis(250)
            }
        );
    }

    #[test]
    fn a_rejection_waits_the_longest_delay() {
        let mut d = Dialer::new(cfg(1, false));
        assert_eq!(delay_ms(d.on(DialEvent::Rejected, 0.0)), 5_000);
        assert_eq!(d.attempt(), 16);
    }

    #[test]
    fn required_gives_up_only_before_the_first_registration() {
        let mut d = Dialer::new(cfg(1, true));
        assert!(matches!(
            d.on(DialEvent::Failed, 0.5),
            DialAction::Dial { .. }
        ));
        assert!(matches!(
            d.on(DialEvent::Failed, 0.5),
            DialAction::Dial { .. }
        ));
        assert_eq!(
            d.on(DialEvent::Failed, 0.5),
            DialAction::GiveUp(GiveUp::Unreachable { attempts: 3 })
        );
        let mut d = Dialer::new(cfg(1, true));
        assert_eq!(
            d.on(DialEvent::Rejected, 0.5),
            DialAction::GiveUp(GiveUp::Rejected)
        );
        let mut d = Dialer::new(cfg(1, true));
        d.on(DialEvent::Established, 0.5);
        d.on(DialEvent::Lost, 0.5);
        for _ in 0..10 {
            assert!(matches!(
                d.on(DialEvent::Failed, 0.5),
                DialAction::Dial { .. }
            ));
        }
        assert!(matches!(
            d.on(DialEvent::Rejected, 0.5),
            DialAction::Dial { .. }
        ));
    }

    fn event() -> impl Strategy<Value = DialEvent> {
        prop_oneof![
            Just(DialEvent::Failed),
            Just(DialEvent::Rejected),
            Just(DialEvent::Established),
            Just(DialEvent::Lost),
        ]
    }

    proptest! {
        /// Whatever happens: addresses stay in range, no delay exceeds the cap, an optional
        /// Ghost never gives up, and a required one gives up only before registering.
        #[test]
        fn any_history_keeps_the_contract(
            addresses in 1usize..5,
            required in any::<bool>(),
            evs in proptest::collection::vec((event(), 0.0f64..1.0), 1..200),
        ) {
            let c = DialConfig { addresses, backoff: Backoff::default(), required, max_attempts: 4 };
            let mut d = Dialer::new(c);
            for (ev, unit) in evs {
                let was_registered = d.registered_once();
                match d.on(ev, unit) {
                    DialAction::Dial { address, delay } => {
                        prop_assert!(address < addresses);
                        prop_assert!(delay <= Duration::from_millis(5_000));
                        prop_assert!(delay >= Duration::from_millis(125));
                    }
                    DialAction::Connected => prop_assert_eq!(ev, DialEvent::Established),
                    DialAction::GiveUp(_) => {
                        prop_assert!(required && !was_registered);
                        break;
                    }
                }
            }
        }
    }
}
