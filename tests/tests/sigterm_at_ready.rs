//! A SIGTERM sent the moment a process prints its "ready" line is a graceful stop (exit 0,
//! the "signal received; stopping" line logged), never SIGTERM's default action: service
//! managers and scripts stop a process as soon as it says it is ready.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::{Ghost, Mirage, TempDir};

const ROUNDS: usize = 5;

#[test]
fn mirage_stops_gracefully_on_sigterm_right_after_ready() {
    for round in 0..ROUNDS {
        let dir = TempDir::new(&format!("sigterm-mirage-{round}"));
        let mut m = Mirage::start(&dir.0, 0, "");
        let code = m.proc.sigterm();
        assert_eq!(
            code,
            Some(0),
            "round {round}: mirage exit {code:?} (None = killed by the signal); log:\n{}",
            m.proc.log_text()
        );
        assert!(
            m.proc.log_text().contains("signal received; stopping"),
            "round {round}"
        );
    }
}

#[test]
fn ghost_stops_gracefully_on_sigterm_right_after_ready() {
    for round in 0..ROUNDS {
        let dir = TempDir::new(&format!("sigterm-ghost-{round}"));
        let mut g = Ghost::start_headless(&dir.0, "ghost.sig");
        let code = g.proc.sigterm();
        assert_eq!(
            code,
            Some(0),
            "round {round}: ghost exit {code:?} (None = killed by the signal); log:\n{}",
            g.proc.log_text()
        );
        assert!(
            g.proc.log_text().contains("signal received; stopping"),
            "round {round}"
        );
    }
}
