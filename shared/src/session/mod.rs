//! Session policy shared by both sides: timeouts and reconnect backoff (PROTOCOL.md §1),
//! and the sans-I/O session machines: [`dial`] (the Ghost's dial / backoff / reconnect),
//! [`heartbeat`] (naming and liveness), [`identity`] (Mirage's admission decision).
//! Pure: the actors own the clocks and pass time and randomness in.

pub mod dial;
pub mod heartbeat;
pub mod identity;
mod writer;

use std::time::Duration;

use serde::{Deserialize, Serialize};
pub use writer::{shutdown_signal, spawn_frame_writer};

/// Session timing, all in milliseconds so TOML configs stay readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    pub connect_ms: u64,
    pub handshake_ms: u64,
    pub read_ms: u64,
    pub write_ms: u64,
    pub heartbeat_ms: u64,
    pub dead_after_ms: u64,
    pub ack_timeout_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 5_000,
            handshake_ms: 5_000,
            read_ms: 15_000,
            write_ms: 15_000,
            heartbeat_ms: 5_000,
            dead_after_ms: 15_000,
            ack_timeout_ms: 20_000,
        }
    }
}

impl Timeouts {
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    pub fn handshake(&self) -> Duration {
        Duration::from_millis(self.handshake_ms)
    }
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    pub fn dead_after(&self) -> Duration {
        Duration::from_millis(self.dead_after_ms)
    }
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }

    /// Zero would mean "never" for a timer and "busy loop" for a heartbeat: refuse it.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("connect_ms", self.connect_ms),
            ("handshake_ms", self.handshake_ms),
            ("read_ms", self.read_ms),
            ("write_ms", self.write_ms),
            ("heartbeat_ms", self.heartbeat_ms),
            ("dead_after_ms", self.dead_after_ms),
            ("ack_timeout_ms", self.ack_timeout_ms),
        ] {
            if v == 0 {
                return Err(format!("timeouts.{name} must be greater than 0"));
            }
        }
        if self.dead_after_ms <= self.heartbeat_ms {
            return Err(format!(
                "timeouts.dead_after_ms ({}) must exceed heartbeat_ms ({})",
                self.dead_after_ms, self.heartbeat_ms
            ));
        }
        Ok(())
    }
}

/// Exponential backoff with multiplicative jitter: `initial × factor^(attempt-1)`, capped at
/// `max`, then × U[0.5, 1.5). Unlike edgectl, jitter applies from the first attempt (so a
/// fleet restarted together does not redial in lockstep) and the jittered value is capped
/// again, so no delay exceeds `max`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    pub initial_ms: u64,
    pub factor: f64,
    pub max_ms: u64,
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 250,
            factor: 2.0,
            max_ms: 5_000,
            jitter: true,
        }
    }
}

impl Backoff {
    /// Delay before attempt `attempt` (1-based). `unit` is a uniform sample in [0, 1).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let factor = if self.factor.is_finite() && self.factor >= 1.0 {
            self.factor
        } else {
            1.0
        };
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let base = (self.initial_ms as f64 * factor.powi(exp)).min(self.max_ms as f64);
        let d = if self.jitter {
            (base * (0.5 + unit.clamp(0.0, 1.0))).min(self.max_ms as f64)
        } else {
            base
        };
        Duration::from_millis(d.max(0.0) as u64)
    }
}

/// Small deterministic PRNG (SplitMix64) for jitter: seedable in tests, no dependency.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed)
    }

    /// Seeded from the clock and the process id, so a fleet's Ghosts diverge.
    pub fn from_entropy() -> Jitter {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Jitter(t ^ ((std::process::id() as u64) << 32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unjittered_sequence_matches_the_contract() {
        let b = Backoff {
            jitter: false,
            ..Backoff::default()
        };
        let ms: Vec<u64> = (1..=7)
            .map(|a| b.delay(a, 0.0).as_millis() as u64)
            .collect();
        assert_eq!(ms, [250, 500, 1000, 2000, 4000, 5000, 5000]);
    }

    #[test]
    fn jitter_stays_in_half_to_one_and_a_half_and_under_the_cap() {
        let b = Backoff::default();
        let mut j = Jitter::new(42);
        for attempt in 1..=20 {
            for _ in 0..200 {
                let d = b.delay(attempt, j.unit()).as_millis() as f64;
                let base = (250.0 * 2f64.powi(attempt as i32 - 1)).min(5000.0);
                assert!(
                    d >= base * 0.5 - 1.0 && d <= (base * 1.5).min(5000.0),
                    "{attempt} {d}"
                );
            }
        }
        // Growing: the mean of attempt 4 is well above attempt 1's.
        let mean = |a| {
            (0..100)
                .map(|i| b.delay(a, i as f64 / 100.0).as_millis())
                .sum::<u128>()
        };
        assert!(mean(4) > 4 * mean(1));
    }

    #[test]
    fn timeouts_refuse_nonsense() {
        assert!(Timeouts::default().validate().is_ok());
        let t = Timeouts {
            heartbeat_ms: 0,
            ..Timeouts::default()
        };
        assert!(t.validate().is_err());
        let t = Timeouts {
            dead_after_ms: 5_000,
            ..Timeouts::default()
        };
        assert!(t.validate().is_err());
    }
}
