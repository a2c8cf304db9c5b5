//! `[[ghost_admin]]` Ghosts (an edgectl Ghost driven through its admin address): probed
//! every 3 s (the fleet registry decides what a probe means), commands run through
//! `execute_envelope` and their event ingested like any other.

use std::time::Duration;

use actix::prelude::*;
use actorkit::metrics::MeteredAddr;
use shared::envelope::{Command, Event};
use shared::error::code;

use super::Supervisor;
use crate::actors::protocol::Ingest;
use crate::metrics as m;

impl Supervisor {
    /// Probes every `[[ghost_admin]]` Ghost: reachable, right id, which seeds.
    pub(super) fn poll_admin_ghosts(&mut self, ctx: &mut Context<Self>) {
        let timeout = Duration::from_millis(self.cfg.timeouts.connect_ms.min(2000));
        for ga in self.cfg.ghost_admin.clone() {
            let fut = async move { crate::admin_client::probe(&ga.addr, &ga.token, timeout).await };
            let id = ga.id.clone();
            ctx.spawn(fut.into_actor(self).map(move |res, act, _| {
                if act.core.fleet.admin_probed(&id, res, shared::now_ms()) {
                    act.flush_fleet();
                    act.ghost_up(&id);
                }
                act.flush_fleet();
            }));
        }
    }

    /// Runs a command through an admin Ghost's `execute_envelope` and ingests its event.
    pub(super) fn dispatch_admin(
        &mut self,
        addr: String,
        ghost: String,
        command: Command,
        ctx: &mut Context<Self>,
    ) {
        self.admin_msg_id += 1;
        let msg_id = self.admin_msg_id;
        let timeout = Duration::from_millis(
            command
                .deadline_ms
                .map(|d| d.saturating_sub(shared::now_ms()))
                .unwrap_or(30_000)
                .clamp(1000, 600_000),
        );
        let me = MeteredAddr::new(ctx.address(), "mirage.supervisor");
        m::COMMANDS_SENT.inc();
        let token = self
            .cfg
            .ghost_admin
            .iter()
            .find(|g| g.id == ghost)
            .map(|g| g.token.clone())
            .unwrap_or_default();
        actix_rt::spawn(async move {
            let cmd = command.clone();
            let res = crate::admin_client::execute(&addr, &token, msg_id, command, timeout).await;
            let ev = match res {
                Ok(e) => e,
                Err(why) => {
                    // The Ghost refused or could not be reached: a terminal error, not silence.
                    let mut e = Event::new(
                        format!("evt.{}", cmd.command_id),
                        cmd.command_id.clone(),
                        cmd.intent_id.clone(),
                        ghost.clone(),
                        cmd.seed_selector.clone(),
                        shared::envelope::Outcome::Error,
                    );
                    e.error_code = Some(code::RUNTIME);
                    e.error_reason = Some(format!("admin {addr}: {why}"));
                    e.timestamp_ms = Some(shared::now_ms());
                    e
                }
            };
            me.do_send(Ingest {
                ghost_id: ghost,
                event: ev,
            });
        });
    }
}
