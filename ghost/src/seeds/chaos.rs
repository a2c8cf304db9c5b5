//! `seed.chaos`: the seed runtime's fault-injection seed (opt-in: list it in `seeds`). It
//! panics on request, awaits timers concurrently and publishes observations, so tests can
//! prove supervision, async operations and observations on a real Ghost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shared::envelope::Args;

use super::{Call, OperationSpec, Seed, SeedCtx, SeedOutput};

/// Operations of this seed that may be pending at once.
pub const CONCURRENCY: usize = 8;

pub struct Chaos {
    max_sleep_ms: u64,
    /// Operations served by this instance: a restart starts again at 0.
    served: Arc<AtomicU64>,
}

impl Chaos {
    pub fn new(max_sleep_ms: u64) -> Chaos {
        Chaos {
            max_sleep_ms,
            served: Arc::new(AtomicU64::new(0)),
        }
    }
}

static OPS: &[OperationSpec] = &[
    OperationSpec::new(
        "count",
        "Operations this instance has served (0 after a restart)",
    ),
    OperationSpec::new("panic", "Panic in the operation (the seed is restarted)").mutating(),
    OperationSpec::new(
        "panic_async",
        "Panic inside an awaited operation (the seed is restarted)",
    )
    .mutating(),
    OperationSpec::new(
        "sleep",
        "Await a timer of ms milliseconds (bounded, concurrent)",
    )
    .args(&["ms"])
    .required(&["ms"]),
    OperationSpec::new("observe", "Publish the arguments as an observation").open(),
];

impl Seed for Chaos {
    fn id(&self) -> &'static str {
        "seed.chaos"
    }
    fn name(&self) -> &'static str {
        "Chaos"
    }
    fn description(&self) -> String {
        "Fault injection for the seed runtime (panics, concurrent awaits, observations)".into()
    }
    fn operations(&self) -> &'static [OperationSpec] {
        OPS
    }
    fn concurrency(&self) -> usize {
        CONCURRENCY
    }

    fn call(&mut self, operation: &str, args: &Args, ctx: &SeedCtx) -> Call {
        let served = self.served.fetch_add(1, Ordering::Relaxed);
        match operation {
            "count" => Call::Done(SeedOutput::ok(format!("{served}\n"))),
            #[allow(clippy::panic)] // the point of this operation
            "panic" => panic!("seed.chaos: panic requested"),
            "panic_async" => Call::Pending(Box::pin(async {
                tokio::task::yield_now().await;
                #[allow(clippy::panic)]
                {
                    panic!("seed.chaos: panic requested inside a future")
                }
            })),
            "sleep" => match args.get("ms").and_then(|v| v.trim().parse::<u64>().ok()) {
                Some(ms) if ms <= self.max_sleep_ms => Call::Pending(Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    SeedOutput::ok(format!("chaos sleep: {ms}ms\n"))
                })),
                Some(ms) => Call::Done(SeedOutput::error(
                    2,
                    format!(
                        "chaos sleep: argument ms={ms} exceeds the limit of {}ms\n",
                        self.max_sleep_ms
                    ),
                )),
                None => Call::Done(SeedOutput::error(
                    2,
                    "chaos sleep: argument ms must be a whole number\n",
                )),
            },
            "observe" => match ctx.observe(args.clone()) {
                Ok(()) => Call::Done(SeedOutput::ok("chaos observe: published\n")),
                Err(e) => Call::Done(SeedOutput::error(2, format!("chaos observe: {e}\n"))),
            },
            other => Call::Done(SeedOutput::error(
                64,
                format!("chaos: unknown operation {other}\n"),
            )),
        }
    }
}
