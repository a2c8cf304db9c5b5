//! Ghost sessions come and go: registration (admission decided by the fleet registry),
//! verification, heartbeats, clock skew, session end.

use actix::prelude::*;
use shared::handshake::RegistrationAck;

use super::Supervisor;
use crate::actors::protocol::{
    ClockSkew, Close, Heartbeats, Register, SessionClosed, SessionVerified,
};

impl Handler<Register> for Supervisor {
    type Result = Result<RegistrationAck, RegistrationAck>;

    fn handle(&mut self, m: Register, _: &mut Context<Self>) -> Self::Result {
        let (ghost, now) = (m.reg.ghost_id.clone(), shared::now_ms());
        let admitted = self
            .core
            .fleet
            .register(m.reg, m.session, m.peer, now)
            .map_err(|why| why.ack(&ghost, now))?;
        if let Some(old) = &admitted.replaced {
            old.close.do_send(Close {
                reason: admitted.replaced_reason(),
            });
        }
        self.flush_fleet();
        if admitted.ghost_up {
            self.ghost_up(&ghost);
        }
        Ok(admitted.ack)
    }
}

impl Handler<SessionVerified> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: SessionVerified, _: &mut Context<Self>) {
        if self.core.fleet.verified(&m.ghost_id, &m.session_id) {
            self.flush_fleet();
            self.ghost_up(&m.ghost_id);
        }
    }
}

impl Handler<Heartbeats> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: Heartbeats, _: &mut Context<Self>) {
        self.core.fleet.heartbeats(&m.ghost_id, m.count, m.last_ms);
    }
}

impl Handler<ClockSkew> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: ClockSkew, _: &mut Context<Self>) {
        self.core
            .fleet
            .clock_skew(m.ghost_id, &m.session_id, m.skew_ms);
    }
}

impl Handler<SessionClosed> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: SessionClosed, _: &mut Context<Self>) {
        let now = shared::now_ms();
        if self
            .core
            .fleet
            .closed(&m.ghost_id, &m.session_id, &m.reason, now)
        {
            self.flush_fleet();
        }
    }
}

actorkit::metered!(Supervisor, Register);
actorkit::metered!(Supervisor, SessionVerified);
actorkit::metered!(Supervisor, Heartbeats);
actorkit::metered!(Supervisor, ClockSkew);
actorkit::metered!(Supervisor, SessionClosed);
