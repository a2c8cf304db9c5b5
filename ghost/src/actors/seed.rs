//! One supervised actor per seed, on its own arbiter thread. Its queue runs up to the seed's
//! declared concurrency at once (1 = in order, as before); a blocking seed blocks only its
//! own thread, an async one awaits its I/O there. A panic fails the command that caused it,
//! then the actor stops and its `Supervisor` restarts it with a fresh seed after a backoff;
//! queued commands wait for the new instance. The Ghost and the other seeds carry on.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::FutureExt;
use shared::envelope::Args;
use tokio::sync::oneshot;

use crate::seeds::{Call, Seed, SeedCtx, SeedOutput};

/// Builds the seed again after a failure.
pub type Factory = Arc<dyn Fn() -> Result<Box<dyn Seed>, String> + Send + Sync>;

/// First restart delay; it doubles per consecutive failure up to [`BACKOFF_MAX_MS`].
pub const BACKOFF_INITIAL_MS: u64 = 100;
pub const BACKOFF_MAX_MS: u64 = 10_000;
/// A seed that ran this long since its last start is healthy again: its backoff resets.
pub const HEALTHY_AFTER_MS: u64 = 60_000;

/// Delay before restart number `failures` (1 = first failure).
pub fn backoff_ms(failures: u32) -> u64 {
    let shift = failures.saturating_sub(1).min(16);
    BACKOFF_INITIAL_MS
        .saturating_mul(1u64 << shift)
        .min(BACKOFF_MAX_MS)
}

struct Queued {
    exec: Execute,
    tx: oneshot::Sender<SeedOutput>,
}

pub struct SeedActor {
    id: String,
    seed: Option<Box<dyn Seed>>,
    factory: Factory,
    ctx: SeedCtx,
    queue: VecDeque<Queued>,
    in_flight: usize,
    /// Consecutive failures (reset once the seed stays up for HEALTHY_AFTER_MS).
    failures: u32,
    pub restarts: u64,
    started_at: Instant,
    ready: bool,
    shut_down: bool,
}

impl SeedActor {
    pub fn new(id: &str, factory: Factory, ctx: SeedCtx) -> SeedActor {
        SeedActor {
            id: id.to_owned(),
            seed: None,
            factory,
            ctx,
            queue: VecDeque::new(),
            in_flight: 0,
            failures: 0,
            restarts: 0,
            started_at: Instant::now(),
            ready: false,
            shut_down: false,
        }
    }

    /// Builds (if needed) and starts the seed; a failure stops the actor for a restart.
    fn boot(&mut self, ctx: &mut Context<Self>) {
        if self.shut_down {
            return;
        }
        if self.seed.is_none() {
            match (self.factory)() {
                Ok(s) => self.seed = Some(s),
                Err(e) => {
                    tracing::error!(component = "ghost.seed", seed = %self.id, error = %e, "seed cannot be built");
                    return self.fail(ctx, "cannot be built");
                }
            }
        }
        let Some(seed) = self.seed.as_mut() else {
            return;
        };
        let sctx = &self.ctx;
        match catch_unwind(AssertUnwindSafe(|| seed.start(sctx))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(component = "ghost.seed", seed = %self.id, error = %e, "seed failed to start");
                return self.fail(ctx, "failed to start");
            }
            Err(_) => return self.fail(ctx, "panicked in start"),
        }
        self.started_at = Instant::now();
        self.ready = true;
        tracing::info!(component = "ghost.seed", seed = %self.id, restarts = self.restarts, concurrency = self.seed.as_ref().map(|s| s.concurrency()).unwrap_or(1), "seed started");
        self.pump(ctx);
    }

    /// The seed is broken: drop it and let the supervisor restart the actor.
    fn fail(&mut self, ctx: &mut Context<Self>, why: &str) {
        self.ready = false;
        self.seed = None;
        tracing::error!(component = "ghost.seed", seed = %self.id, reason = why, failures = self.failures + 1, "seed failed; restarting it");
        ctx.stop();
    }

    /// Starts queued operations while the seed has room.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        while self.ready {
            let limit = self
                .seed
                .as_ref()
                .map(|s| s.concurrency().max(1))
                .unwrap_or(1);
            if self.in_flight >= limit {
                return;
            }
            let Some(q) = self.queue.pop_front() else {
                return;
            };
            if let Some(d) = q.exec.deadline {
                let now = Instant::now();
                if now > d {
                    let _ = q.tx.send(SeedOutput::error(
                        1,
                        format!(
                            "deadline passed {} ms before the seed was free; not started\n",
                            (now - d).as_millis()
                        ),
                    ));
                    continue;
                }
            }
            let Some(seed) = self.seed.as_mut() else {
                return;
            };
            let sctx = &self.ctx;
            let (op, args) = (&q.exec.operation, &q.exec.args);
            match catch_unwind(AssertUnwindSafe(|| seed.call(op, args, sctx))) {
                Ok(Call::Done(out)) => {
                    let _ = q.tx.send(out);
                }
                Ok(Call::Pending(f)) => {
                    self.in_flight += 1;
                    let operation = q.exec.operation.clone();
                    let tx = q.tx;
                    ctx.spawn(AssertUnwindSafe(f).catch_unwind().into_actor(self).map(
                        move |res, act, ctx| {
                            act.in_flight = act.in_flight.saturating_sub(1);
                            match res {
                                Ok(out) => {
                                    let _ = tx.send(out);
                                    act.pump(ctx);
                                }
                                Err(_) => {
                                    tracing::error!(component = "ghost.seed", seed = %act.id, operation = %operation, "seed panicked");
                                    let _ = tx.send(panicked());
                                    act.fail(ctx, "panicked");
                                }
                            }
                        },
                    ));
                }
                Err(_) => {
                    tracing::error!(component = "ghost.seed", seed = %self.id, operation = %q.exec.operation, "seed panicked");
                    let _ = q.tx.send(panicked());
                    return self.fail(ctx, "panicked");
                }
            }
        }
    }
}

fn panicked() -> SeedOutput {
    SeedOutput::error(70, "seed panicked; it is being restarted\n")
}

impl Actor for SeedActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        actorkit::metrics::actor("ghost.seed").instance_started();
        if self.failures == 0 {
            return self.boot(ctx);
        }
        let delay = backoff_ms(self.failures);
        tracing::warn!(component = "ghost.seed", seed = %self.id, failures = self.failures, backoff_ms = delay, "seed restarts after a backoff");
        // `wait` holds the mailbox too: commands queue until the new instance is up.
        ctx.wait(
            tokio::time::sleep(Duration::from_millis(delay))
                .into_actor(self)
                .map(|_, act, ctx| act.boot(ctx)),
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        actorkit::metrics::actor("ghost.seed").instance_stopped();
    }
}

impl Supervised for SeedActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Futures of the failed instance were dropped with it: their callers got an error.
        self.in_flight = 0;
        self.ready = false;
        self.seed = None;
        self.restarts += 1;
        if self.started_at.elapsed() >= Duration::from_millis(HEALTHY_AFTER_MS) {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
    }
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
    type Result = ResponseFuture<SeedOutput>;

    fn handle(&mut self, m: Execute, ctx: &mut Context<Self>) -> Self::Result {
        if self.shut_down {
            return Box::pin(async { SeedOutput::error(1, "the Ghost is stopping\n") });
        }
        let (tx, rx) = oneshot::channel();
        self.queue.push_back(Queued { exec: m, tx });
        self.pump(ctx);
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                SeedOutput::error(
                    70,
                    "the seed failed while this operation ran; its effect is unknown\n",
                )
            })
        })
    }
}

// Timed until the operation's output is ready, not only until it is queued.
impl Handler<actorkit::metrics::Metered<Execute>> for SeedActor {
    type Result = ResponseFuture<SeedOutput>;

    fn handle(
        &mut self,
        m: actorkit::metrics::Metered<Execute>,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        let start = Instant::now();
        let guard = m.guard;
        let f = <Self as Handler<Execute>>::handle(self, m.msg, ctx);
        Box::pin(async move {
            let out = f.await;
            guard.handled(start.elapsed());
            out
        })
    }
}

/// Graceful stop: queued commands fail, the seed's `stop` runs for at most `grace`, then the
/// seed is dropped. The actor stays (not restarted) and refuses further commands.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub grace: Duration,
}

actorkit::metered!(SeedActor, Shutdown);

impl Handler<Shutdown> for SeedActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, m: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.shut_down = true;
        self.ready = false;
        for q in self.queue.drain(..) {
            let _ = q.tx.send(SeedOutput::error(1, "the Ghost is stopping\n"));
        }
        let stop = self.seed.as_mut().map(|s| s.stop());
        let id = self.id.clone();
        Box::pin(
            async move {
                if let Some(stop) = stop {
                    if tokio::time::timeout(m.grace, stop).await.is_err() {
                        tracing::warn!(component = "ghost.seed", seed = %id, grace_ms = m.grace.as_millis() as u64, "seed did not stop within its grace");
                    }
                }
            }
            .into_actor(self)
            .map(|_, act, _| {
                act.seed = None;
                tracing::info!(component = "ghost.seed", seed = %act.id, "seed stopped");
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_bounded() {
        assert_eq!(backoff_ms(1), 100);
        assert_eq!(backoff_ms(2), 200);
        assert_eq!(backoff_ms(4), 800);
        assert_eq!(backoff_ms(8), BACKOFF_MAX_MS);
        assert_eq!(backoff_ms(u32::MAX), BACKOFF_MAX_MS);
    }
}
