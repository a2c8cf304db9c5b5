//! Mirage's panic policy (docs/ARCHITECTURE.md, "Supervision"):
//! - State-owning actors whose state is persisted (`IntentPlan`, `SeedLock`) run each
//!   handler inside [`restartable`]; a panic there stops the actor and its actix `Supervisor`
//!   restarts it (`Supervised::restarting`) from the state it last handed to the store, then
//!   it resumes exactly as after a process restart (re-acquire, re-send unanswered commands,
//!   which the Ghost de-duplicates by command id).
//! - Any other panic (the orchestrator `Supervisor`, the store, the report hub, a session, the
//!   API) is unrecoverable in place: the hook logs it and ends the process with
//!   [`PANIC_EXIT`], so the service manager restarts Mirage from its database instead of a
//!   zombie answering every request with `MailboxError(Closed)`.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// EX_SOFTWARE: an internal error; the service manager restarts us.
pub const PANIC_EXIT: i32 = 70;

thread_local! {
    static RESTARTABLE: Cell<u32> = const { Cell::new(0) };
}

/// Installs the process-wide hook once, before any actor starts.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if RESTARTABLE.with(|c| c.get()) > 0 {
            // Caught by `restartable`: the actor restarts; keep the default report.
            previous(info);
            return;
        }
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = panic_text(info.payload());
        tracing::error!(component = "mirage.supervision", thread = name, %location, panic = %msg,
            exit_code = PANIC_EXIT, "unrecoverable panic in a non-restartable actor; exiting so the service manager restarts Mirage");
        eprintln!(
            "mirage: unrecoverable panic in a non-restartable actor (thread {name}, {location}): {msg}; exiting with {PANIC_EXIT} so the service manager restarts Mirage"
        );
        std::process::exit(PANIC_EXIT);
    }));
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// Runs `f`; a panic inside comes back as `Err(text)` instead of ending the process.
pub fn restartable<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    RESTARTABLE.with(|c| c.set(c.get() + 1));
    let r = catch_unwind(AssertUnwindSafe(f));
    RESTARTABLE.with(|c| c.set(c.get().saturating_sub(1)));
    r.map_err(|p| panic_text(&*p))
}

/// Test-only fault injection: `MIRAGE_FAULT=plan,lock,supervisor` makes the named point
/// panic once per process. Compiled into debug builds only (release builds always answer
/// false), read from the environment of the process only: no peer or API request reaches it.
pub fn fault(point: &str) -> bool {
    #[cfg(debug_assertions)]
    {
        use std::sync::{Mutex, OnceLock};
        static FIRED: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
        let Ok(v) = std::env::var("MIRAGE_FAULT") else {
            return false;
        };
        if !v.split(',').any(|p| p.trim() == point) {
            return false;
        }
        let mut fired = FIRED
            .get_or_init(|| Mutex::new(Vec::new()))
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if fired.iter().any(|p| p == point) {
            return false;
        }
        fired.push(point.to_owned());
        tracing::warn!(
            component = "mirage.supervision",
            point,
            "MIRAGE_FAULT: injecting a panic"
        );
        true
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = point;
        false
    }
}

/// Panics when the fault `point` is armed (see [`fault`]).
#[allow(clippy::panic)] // the whole point: a test provokes a panic
pub fn inject(point: &str) {
    if fault(point) {
        panic!("MIRAGE_FAULT={point}: injected panic");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restartable_turns_a_panic_into_an_error() {
        #[allow(clippy::panic)]
        let r: Result<(), String> = restartable(|| panic!("boom"));
        assert_eq!(r, Err("boom".to_owned()));
        assert_eq!(restartable(|| 7), Ok(7));
    }
}
