//! One actor per seed, on its own thread (a `SyncArbiter` of one): its mailbox is its queue,
//! so a seed runs one operation at a time and a slow seed never blocks an event loop.

use std::panic::{catch_unwind, AssertUnwindSafe};

use actix::prelude::*;
use shared::envelope::Args;

use crate::seeds::{Seed, SeedOutput};

pub struct SeedActor {
    seed: Box<dyn Seed>,
}

impl SeedActor {
    pub fn new(seed: Box<dyn Seed>) -> SeedActor {
        SeedActor { seed }
    }
}

impl Actor for SeedActor {
    type Context = SyncContext<Self>;
}

#[derive(Message)]
#[rtype(result = "SeedOutput")]
pub struct Execute {
    pub operation: String,
    pub args: Args,
    /// On this Ghost's monotonic clock; a command still queued past it is not started.
    pub deadline: Option<std::time::Instant>,
}

impl Handler<Execute> for SeedActor {
    type Result = MessageResult<Execute>;

    fn handle(&mut self, m: Execute, _: &mut SyncContext<Self>) -> Self::Result {
        if let Some(d) = m.deadline {
            let now = std::time::Instant::now();
            if now > d {
                return MessageResult(SeedOutput::error(
                    1,
                    format!(
                        "deadline passed {} ms before the seed was free; not started\n",
                        (now - d).as_millis()
                    ),
                ));
            }
        }
        let seed = &mut self.seed;
        // A seed bug must not take the Ghost down: the command fails, the actor lives on.
        let out = catch_unwind(AssertUnwindSafe(|| seed.execute(&m.operation, &m.args)))
            .unwrap_or_else(|_| {
                tracing::error!(component = "ghost.seed", seed = seed.id(), operation = %m.operation, "seed panicked");
                SeedOutput::error(70, "seed panicked\n")
            });
        MessageResult(out)
    }
}

// `MessageResult` cannot go through the `metered!` wrapper (stack-notes §4), so this pair
// is written out.
impl Handler<shared::metrics::Metered<Execute>> for SeedActor {
    type Result = MessageResult<shared::metrics::Metered<Execute>>;

    fn handle(
        &mut self,
        m: shared::metrics::Metered<Execute>,
        ctx: &mut SyncContext<Self>,
    ) -> Self::Result {
        let start = std::time::Instant::now();
        let MessageResult(out) = <Self as Handler<Execute>>::handle(self, m.msg, ctx);
        m.guard.handled(start.elapsed());
        MessageResult(out)
    }
}
