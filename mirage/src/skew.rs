//! Clock skew between a Ghost and this Mirage, estimated from the timestamps its heartbeats
//! carry. Pure: callers pass both clocks.
//!
//! A sample is `ghost_ms - mirage_ms` on arrival, which is the true skew minus the one-way
//! delay; the largest of the recent samples is the one that waited least, so it is the
//! estimate. Commands carry a relative budget (ext 207), so skew no longer stops our Ghosts
//! from working; it is shown because timestamps from that Ghost (events, reports, an edgectl
//! Ghost's deadline checks) are off by it.

use std::collections::VecDeque;

/// Recent samples kept per session.
const SAMPLES: usize = 8;
/// A new estimate is worth telling the Supervisor when it moved by this much.
const REPORT_STEP_MS: i64 = 250;
/// Beyond this, `/v1/ghosts` and the dashboard warn.
pub const WARN_MS: i64 = 2000;

#[derive(Debug, Default)]
pub struct SkewEstimator {
    samples: VecDeque<i64>,
    reported: Option<i64>,
}

impl SkewEstimator {
    /// A heartbeat stamped `ghost_ms` by the Ghost arrived at `mirage_ms`. Returns the new
    /// estimate when it differs enough from the last one returned (or is the first).
    pub fn sample(&mut self, ghost_ms: u64, mirage_ms: u64) -> Option<i64> {
        let s =
            (ghost_ms as i128 - mirage_ms as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
        let est = self.estimate()?;
        match self.reported {
            Some(r) if (est - r).abs() < REPORT_STEP_MS => None,
            _ => {
                self.reported = Some(est);
                Some(est)
            }
        }
    }

    pub fn estimate(&self) -> Option<i64> {
        self.samples.iter().copied().max()
    }
}

/// The operator-facing warning for a measured skew, if it is large enough to matter.
pub fn warning(skew_ms: i64) -> Option<String> {
    if skew_ms.abs() < WARN_MS {
        return None;
    }
    Some(format!(
        "clock {:.1} s {} Mirage's: check NTP on the Ghost (commands still run: they carry a relative budget)",
        skew_ms.unsigned_abs() as f64 / 1000.0,
        if skew_ms > 0 { "ahead of" } else { "behind" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_delayed_sample_wins_and_small_moves_are_not_reported() {
        let mut e = SkewEstimator::default();
        // True skew +3600 s; delays 40, 5, 300 ms.
        let t = 1_000_000u64;
        assert_eq!(e.sample(t + 3_600_000, t + 40), Some(3_599_960));
        assert_eq!(e.sample(t + 3_600_000, t + 5), None, "moved 35 ms");
        assert_eq!(e.estimate(), Some(3_599_995));
        assert_eq!(e.sample(t + 3_600_000, t + 300), None);
        // The clock is corrected: the old samples age out and the new estimate is reported.
        let mut last = None;
        for _ in 0..SAMPLES {
            last = e.sample(t, t + 10).or(last);
        }
        assert_eq!(last, Some(-10));
        assert_eq!(e.estimate(), Some(-10));
    }

    #[test]
    fn warns_beyond_two_seconds_either_way() {
        assert_eq!(warning(1999), None);
        assert_eq!(warning(-150), None);
        let w = warning(3_600_000).unwrap();
        assert!(w.contains("3600.0 s ahead of Mirage's"), "{w}");
        assert!(warning(-2500).unwrap().contains("2.5 s behind"));
    }
}
