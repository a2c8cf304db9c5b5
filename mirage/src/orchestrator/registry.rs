//! The fleet registry (pure): the Ghosts Mirage knows, their sessions and who may hold a
//! ghost_id, heartbeats and clock skew, the bound on disconnected Ghosts, drains, and the
//! fleet snapshot plans place steps against. Generic over the session handle `S`, so it is
//! tested without actors; time comes in as `now` (ms).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;

use serde::Serialize;
use shared::error::code;
use shared::handshake::{
    Registration, RegistrationAck, SeedInfo, CAP_SESSION_COMMAND, REJECT_ID_CONFLICT,
};

use crate::config::MirageConfig;
use crate::fleet::{FleetView, GhostView};
use crate::metrics as m;
use crate::observe::Observations;

pub struct GhostEntry<S> {
    pub registration: Registration,
    pub session: Option<S>,
    pub session_id: String,
    pub peer: String,
    pub registered_ms: u64,
    pub last_event_ms: u64,
    pub events: u64,
    /// Heartbeat events acked on its sessions (edgectl Ghosts send nothing else), and when
    /// the last one came. Not in `events`: those are observations (command results).
    pub heartbeats: u64,
    pub last_heartbeat_ms: u64,
    /// `[[ghost_admin]]`: driven through this admin address, reachable now or not.
    pub admin_addr: Option<String>,
    pub admin_ok: bool,
    /// With frame auth required, a session counts only after its first authenticated frame.
    pub verified: bool,
    /// Another Ghost process (another instance_id) tried to register this ghost_id while the
    /// holder was alive, and was refused.
    pub conflict: Option<Conflict>,
    /// When the session ended (0 while connected): the oldest disconnected Ghosts are
    /// forgotten first.
    pub disconnected_ms: u64,
}

impl<S> GhostEntry<S> {
    fn new(registration: Registration, registered_ms: u64) -> GhostEntry<S> {
        GhostEntry {
            registration,
            session: None,
            session_id: String::new(),
            peer: String::new(),
            registered_ms,
            last_event_ms: 0,
            events: 0,
            heartbeats: 0,
            last_heartbeat_ms: 0,
            admin_addr: None,
            admin_ok: false,
            verified: false,
            conflict: None,
            disconnected_ms: 0,
        }
    }

    pub fn connected(&self) -> bool {
        (self.session.is_some() && self.verified) || (self.admin_addr.is_some() && self.admin_ok)
    }
}

/// A refused claim to a held ghost_id.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Conflict {
    /// The claimant's instance_id and address.
    pub instance_id: String,
    pub peer: String,
    pub first_ms: u64,
    pub last_ms: u64,
    /// Registrations refused for this claimant.
    pub refused: u64,
}

/// A conflict with no refused attempt for this long is over (the claimant stopped); a Ghost
/// backs off to at most 5 s (x1.5 jitter) after a rejection, so a live claimant retries well
/// inside it.
pub const CONFLICT_STALE_MS: u64 = 30_000;

/// What a registration for a ghost_id that may be held means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// No live session holds the id: register.
    Free,
    /// The same Ghost again (same instance_id, or either side sent none, as edgectl Ghosts
    /// do): the new session replaces the old one.
    Takeover,
    /// A different instance_id while the holder's session is alive: refuse.
    Conflict,
}

/// Pure rule: `held` is the live holder's instance_id (`None` when no live session),
/// `Some(None)` a live holder that sent none.
pub fn claim(held: Option<Option<&str>>, new: Option<&str>) -> Claim {
    match held {
        None => Claim::Free,
        Some(Some(h)) if new.is_some_and(|n| n != h) => Claim::Conflict,
        Some(_) => Claim::Takeover,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GhostInfo {
    pub ghost_id: String,
    pub connected: bool,
    pub session_id: String,
    pub peer: String,
    pub registered_ms: u64,
    /// Events other than heartbeats (command results, observations) and the last one's time.
    pub last_event_ms: u64,
    pub events: u64,
    /// Heartbeat events acked (an edgectl Ghost sends one every 5 s and nothing else on its
    /// session) and the last one's time.
    pub heartbeats: u64,
    pub last_heartbeat_ms: u64,
    /// The latest of `last_event_ms` and `last_heartbeat_ms`: when the Ghost was last heard.
    pub last_seen_ms: u64,
    pub session_commands: bool,
    pub labels: BTreeMap<String, String>,
    pub seeds: Vec<SeedInfo>,
    pub local: bool,
    pub via_admin: Option<String>,
    /// ext registration `instance_id` of the current (or last) holder.
    pub instance_id: Option<String>,
    /// A second Ghost process claiming this ghost_id, refused while the holder is alive.
    pub conflict: Option<Conflict>,
    /// Latest observation per seed (shared::observe); omitted when there is none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub observed: BTreeMap<String, crate::observe::Observed>,
    /// The Ghost's clock minus Mirage's, in ms, from its heartbeats (null until measured).
    pub clock_skew_ms: Option<i64>,
    /// Set when the skew is large enough to matter (see `skew::warning`).
    pub clock_warning: Option<String>,
    /// `mirage ghost drain`: no new step is placed here.
    pub drained: bool,
}

/// A page of the fleet in ghost_id order.
pub struct GhostPage {
    pub ghosts: Vec<GhostInfo>,
    /// The cursor for the next page (the last ghost_id here), when there is more.
    pub next: Option<String>,
    pub total: usize,
}

/// Why a registration was refused; the text is the rejection's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Another Ghost process (another instance_id) holds this ghost_id: the whole text,
    /// starting with `REJECT_ID_CONFLICT` and naming the holder's session.
    #[error("{0}")]
    IdConflict(String),
    #[error("session limit of {0} reached")]
    SessionLimit(usize),
}

impl Refused {
    /// The rejection line's content for `ghost`.
    pub fn ack(&self, ghost: &str, now: u64) -> RegistrationAck {
        RegistrationAck {
            status: "rejected".into(),
            code: code::TRANSPORT,
            message: self.to_string(),
            ghost_id: ghost.to_owned(),
            timestamp_ms: now,
            ..Default::default()
        }
    }
}

/// A registration let in.
pub struct Admitted<S> {
    pub ack: RegistrationAck,
    /// The session it replaces, to be closed with `replaced_reason`.
    pub replaced: Option<S>,
    /// The Ghost may be used at once (no frame auth to wait for): plans that owe it
    /// commands re-send them.
    pub ghost_up: bool,
}

impl<S> Admitted<S> {
    /// The `Close` reason for the replaced session.
    pub fn replaced_reason(&self) -> String {
        format!(
            "replaced by session {}",
            self.ack.session_id.as_deref().unwrap_or_default()
        )
    }
}

/// Where a command for a Ghost goes now.
pub enum Route<'a, S> {
    /// Its verified session takes commands.
    Session(&'a S),
    /// Its `[[ghost_admin]]` address, reachable.
    Admin(String),
    /// Connected, but it takes no commands on its session and has no admin entry.
    NoCommands,
    /// Offline or not yet verified: the command waits for it.
    Waiting,
    /// Not in the registry.
    Unknown,
}

/// `mirage ghost drain`: more Ghosts drained than `drain::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many drained Ghosts")]
pub struct TooManyDrained;

pub struct Registry<S> {
    cfg: Arc<MirageConfig>,
    ghosts: BTreeMap<String, GhostEntry<S>>,
    /// ghost_id → measured clock skew (ms), for `/v1/ghosts`; only for known Ghosts.
    clock_skew: BTreeMap<String, i64>,
    /// The snapshot must be rebuilt whole (at start).
    fleet_dirty: bool,
    /// Ghosts whose view changed since the shared snapshot was last updated.
    fleet_changed: HashSet<String>,
    session_seq: u64,
    /// Ghosts with a session now (the session limit counts these).
    connected_sessions: usize,
    /// Disconnected Ghosts, oldest disconnect first, as (disconnected_ms, ghost_id); entries
    /// that reconnected since are skipped (and compacted away) when met.
    disconnected: VecDeque<(u64, String)>,
    disconnected_n: usize,
    /// Latest observed state per ghost/seed (bounded; crate::observe).
    observed: Observations,
    /// Drained ghost_ids (crate::drain), persisted in data_dir by the caller.
    drained: BTreeSet<String>,
}

impl<S> Registry<S> {
    pub fn new(cfg: Arc<MirageConfig>, drained: BTreeSet<String>) -> Registry<S> {
        Registry {
            cfg,
            ghosts: BTreeMap::new(),
            clock_skew: BTreeMap::new(),
            fleet_dirty: true,
            fleet_changed: HashSet::new(),
            session_seq: 0,
            connected_sessions: 0,
            disconnected: VecDeque::new(),
            disconnected_n: 0,
            observed: Observations::default(),
            drained,
        }
    }

    /// The `[[ghost_admin]]` Ghosts, known from the start and unreachable until probed.
    pub fn add_admin_ghosts(&mut self) {
        for ga in self.cfg.ghost_admin.clone() {
            let mut g = GhostEntry::new(
                Registration {
                    ghost_id: ga.id.clone(),
                    peer_identity: ga.id.clone(),
                    seed_list: Some(vec![]),
                    admin_addr: Some(ga.addr.clone()),
                    ..Default::default()
                },
                0,
            );
            g.peer = ga.addr.clone();
            g.admin_addr = Some(ga.addr);
            g.verified = true;
            self.ghosts.insert(ga.id.clone(), g);
        }
    }

    pub fn get(&self, ghost: &str) -> Option<&GhostEntry<S>> {
        self.ghosts.get(ghost)
    }

    pub fn contains(&self, ghost: &str) -> bool {
        self.ghosts.contains_key(ghost)
    }

    pub fn connected(&self, ghost: &str) -> bool {
        self.ghosts.get(ghost).is_some_and(|g| g.connected())
    }

    pub fn known(&self) -> usize {
        self.ghosts.len()
    }

    pub fn connected_count(&self) -> usize {
        self.ghosts.values().filter(|g| g.connected()).count()
    }

    /// Disconnected Ghosts still remembered.
    pub fn disconnected_count(&self) -> usize {
        self.disconnected_n
    }

    pub fn drained(&self) -> &BTreeSet<String> {
        &self.drained
    }

    /// A Ghost's registration: refused (a conflicting claim, the session limit), or let in.
    pub fn register(
        &mut self,
        reg: Registration,
        session: S,
        peer: String,
        now: u64,
    ) -> Result<Admitted<S>, Refused> {
        let ghost = reg.ghost_id.clone();
        let held = self
            .ghosts
            .get(&ghost)
            .filter(|g| g.session.is_some())
            .map(|g| g.registration.instance());
        if claim(held, reg.instance()) == Claim::Conflict {
            return Err(Refused::IdConflict(
                self.refuse_claim(&ghost, &reg, &peer, now),
            ));
        }
        let replacing = held.is_some();
        if !replacing && self.connected_sessions >= self.cfg.limits.sessions {
            m::SESSIONS_REJECTED.inc();
            return Err(Refused::SessionLimit(self.cfg.limits.sessions));
        }
        self.session_seq += 1;
        let session_id = format!("{ghost}#{}", self.session_seq);
        let entry = self
            .ghosts
            .entry(ghost.clone())
            .or_insert_with(|| GhostEntry::new(reg.clone(), now));
        let replaced = entry.session.take();
        if replaced.is_some() {
            tracing::info!(component = "mirage.supervisor", ghost_id = %ghost, old = %entry.session_id, new = %session_id, "new session replaces the old one");
        } else {
            self.connected_sessions += 1;
            if entry.disconnected_ms != 0 {
                self.disconnected_n = self.disconnected_n.saturating_sub(1);
            }
        }
        // The claimant is the holder now (the old holder ended), or the claim went quiet.
        if entry.conflict.as_ref().is_some_and(|c| {
            Some(c.instance_id.as_str()) == reg.instance()
                || now.saturating_sub(c.last_ms) > CONFLICT_STALE_MS
        }) {
            entry.conflict = None;
        }
        entry.registration = reg;
        entry.session = Some(session);
        entry.verified = !self.cfg.auth.required;
        entry.session_id = session_id.clone();
        entry.peer = peer;
        entry.disconnected_ms = 0;
        self.fleet_changed.insert(ghost.clone());
        m::SESSIONS_OPENED.inc();
        Ok(Admitted {
            ack: RegistrationAck {
                status: "accepted".into(),
                code: 0,
                message: "registered".into(),
                ghost_id: ghost,
                timestamp_ms: now,
                session_id: Some(session_id),
                heartbeat_interval_ms: Some(self.cfg.timeouts.heartbeat_ms),
            },
            replaced,
            // Commands sent while it was away may not have arrived: plans re-send them.
            ghost_up: !self.cfg.auth.required,
        })
    }

    /// Records a refused claim to a held ghost_id (logged once per claimant, counted every
    /// time) and returns the rejection's message. The holder's instance_id is not told: it
    /// would let the claimant pose as the holder.
    fn refuse_claim(&mut self, ghost: &str, reg: &Registration, peer: &str, now: u64) -> String {
        m::GHOST_ID_CONFLICTS.inc();
        let claimant = reg.instance().unwrap_or_default().to_owned();
        let Some(g) = self.ghosts.get_mut(ghost) else {
            return format!("{REJECT_ID_CONFLICT}: {ghost}");
        };
        match &mut g.conflict {
            Some(c)
                if c.instance_id == claimant
                    && now.saturating_sub(c.last_ms) <= CONFLICT_STALE_MS =>
            {
                c.refused += 1;
                c.last_ms = now;
                c.peer = peer.to_owned();
                tracing::debug!(component = "mirage.supervisor", ghost_id = %ghost, instance_id = %claimant, peer = %peer, refused = c.refused, "ghost_id conflict: claim refused again");
            }
            _ => {
                tracing::warn!(component = "mirage.supervisor", ghost_id = %ghost, holder_session = %g.session_id, holder_peer = %g.peer, holder_instance = %g.registration.instance().unwrap_or_default(), claimant_instance = %claimant, claimant_peer = %peer, "ghost_id conflict: a second Ghost process claims this ghost_id while the holder is alive; refused (stop one of them or give it its own ghost_id)");
                g.conflict = Some(Conflict {
                    instance_id: claimant,
                    peer: peer.to_owned(),
                    first_ms: now,
                    last_ms: now,
                    refused: 1,
                });
                self.fleet_changed.insert(ghost.to_owned());
            }
        }
        format!(
            "{REJECT_ID_CONFLICT}: {ghost} is held by a live session ({}) of another Ghost process (another instance_id); stop one of the two or give this one its own ghost_id",
            g.session_id
        )
    }

    /// The session's first authenticated frame: true when this made the Ghost usable.
    pub fn verified(&mut self, ghost: &str, session_id: &str) -> bool {
        match self.ghosts.get_mut(ghost) {
            Some(g) if g.session_id == session_id && !g.verified => {
                g.verified = true;
                self.fleet_changed.insert(ghost.to_owned());
                true
            }
            _ => false,
        }
    }

    pub fn heartbeats(&mut self, ghost: &str, count: u64, last_ms: u64) {
        if let Some(g) = self.ghosts.get_mut(ghost) {
            g.heartbeats += count;
            g.last_heartbeat_ms = g.last_heartbeat_ms.max(last_ms);
        }
    }

    /// A skew measured on the Ghost's current session (an older session's is ignored).
    pub fn clock_skew(&mut self, ghost: String, session_id: &str, skew_ms: i64) {
        if self
            .ghosts
            .get(&ghost)
            .is_some_and(|g| g.session_id == session_id)
        {
            self.clock_skew.insert(ghost, skew_ms);
        }
    }

    /// A session ended: true when it was the Ghost's current one (a replaced session's end
    /// must not mark the Ghost disconnected).
    pub fn closed(&mut self, ghost: &str, session_id: &str, reason: &str, now: u64) -> bool {
        let Some(g) = self.ghosts.get_mut(ghost) else {
            return false;
        };
        if g.session_id != session_id || g.session.is_none() {
            return false;
        }
        g.session = None;
        self.connected_sessions = self.connected_sessions.saturating_sub(1);
        if g.admin_addr.is_none() {
            let at = now.max(1);
            g.disconnected_ms = at;
            self.disconnected.push_back((at, ghost.to_owned()));
            self.disconnected_n += 1;
        }
        self.fleet_changed.insert(ghost.to_owned());
        tracing::info!(component = "mirage.supervisor", ghost_id = %ghost, session_id = %session_id, reason = %reason, "ghost disconnected");
        self.evict_disconnected(now);
        true
    }

    /// Forgets disconnected Ghosts past `limits.disconnected_ghosts` or older than
    /// `limits.disconnected_ghost_ms`, oldest disconnect first, so registrations from ever new
    /// ghost_ids cannot grow the registry without bound.
    pub fn evict_disconnected(&mut self, now: u64) {
        let (cap, age) = (
            self.cfg.limits.disconnected_ghosts,
            self.cfg.limits.disconnected_ghost_ms,
        );
        while let Some((at, id)) = self.disconnected.front() {
            let (at, live) = (
                *at,
                self.ghosts.get(id).is_some_and(|g| {
                    g.session.is_none() && g.admin_addr.is_none() && g.disconnected_ms == *at
                }),
            );
            if live && self.disconnected_n <= cap && now.saturating_sub(at) <= age {
                break;
            }
            let Some((_, id)) = self.disconnected.pop_front() else {
                break;
            };
            if live {
                self.ghosts.remove(&id);
                self.observed.forget(&id);
                self.disconnected_n = self.disconnected_n.saturating_sub(1);
                self.fleet_changed.insert(id.clone());
                m::GHOSTS_EVICTED.inc();
                tracing::debug!(component = "mirage.supervisor", ghost_id = %id, disconnected_ms = at, "disconnected ghost forgotten (registry bound)");
            }
        }
        // Reconnects leave stale queue items behind; keep the queue within twice the live ones.
        if self.disconnected.len() > 2 * self.disconnected_n + 64 {
            let ghosts = &self.ghosts;
            self.disconnected.retain(|(at, id)| {
                ghosts
                    .get(id)
                    .is_some_and(|g| g.session.is_none() && g.disconnected_ms == *at)
            });
        }
    }

    /// An event (not a heartbeat) came from this Ghost.
    pub fn event_seen(&mut self, ghost: &str, now: u64) {
        if let Some(g) = self.ghosts.get_mut(ghost) {
            g.events += 1;
            g.last_event_ms = now;
        }
    }

    /// Keeps an observation (state, not a command's answer); observed checks of standing
    /// intents read it from the fleet snapshot.
    pub fn observe(&mut self, ghost: &str, e: &shared::envelope::Event, now: u64) {
        match self.observed.record(ghost, e, now) {
            Ok(()) => {
                self.fleet_changed.insert(ghost.to_owned());
            }
            Err(err) => {
                tracing::warn!(component = "mirage.supervisor", ghost_id = %ghost, event_id = %e.event_id, seed = %e.seed_id, error = %err, "observation not kept");
            }
        }
    }

    /// An admin Ghost's probe answered `res` (the id it reports and its seeds, or why it is
    /// unreachable): true when it has just become reachable.
    pub fn admin_probed(
        &mut self,
        id: &str,
        res: Result<(String, Vec<SeedInfo>), String>,
        now: u64,
    ) -> bool {
        let Some(g) = self.ghosts.get_mut(id) else {
            return false;
        };
        let was = g.admin_ok;
        match res {
            Ok((reported, seeds)) if reported == id => {
                g.admin_ok = true;
                if g.registered_ms == 0 {
                    g.registered_ms = now;
                }
                if g.registration.seeds() != seeds.as_slice() {
                    g.registration.seed_list = Some(seeds);
                    self.fleet_changed.insert(id.to_owned());
                }
            }
            Ok((reported, _)) => {
                g.admin_ok = false;
                tracing::warn!(component = "mirage.supervisor", ghost_id = %id, reported = %reported, "admin ghost reports another id; not used");
            }
            Err(e) => {
                g.admin_ok = false;
                if was {
                    tracing::warn!(component = "mirage.supervisor", ghost_id = %id, error = %e, "admin ghost unreachable");
                }
            }
        }
        if was == g.admin_ok {
            return false;
        }
        self.fleet_changed.insert(id.to_owned());
        if g.admin_ok {
            tracing::info!(component = "mirage.supervisor", ghost_id = %id, "admin ghost reachable");
        }
        g.admin_ok
    }

    /// Where a command for `ghost` goes: a verified session that takes commands, else the
    /// admin route, else it waits.
    pub fn route(&self, ghost: &str) -> Route<'_, S> {
        let Some(g) = self.ghosts.get(ghost) else {
            return Route::Unknown;
        };
        let takes = g.registration.has_capability(CAP_SESSION_COMMAND);
        match &g.session {
            Some(s) if g.verified && takes => Route::Session(s),
            _ => match (&g.admin_addr, g.admin_ok) {
                (Some(addr), true) => Route::Admin(addr.clone()),
                _ if g.session.is_some() && !takes => Route::NoCommands,
                _ => Route::Waiting,
            },
        }
    }

    /// The drained set with `ghost` drained or not; `None` when nothing changes. The caller
    /// persists it, then [`Registry::set_drained`].
    pub fn drain_change(
        &self,
        ghost: &str,
        drained: bool,
    ) -> Result<Option<BTreeSet<String>>, TooManyDrained> {
        let mut next = self.drained.clone();
        let changed = if drained {
            if next.len() >= crate::drain::MAX {
                return Err(TooManyDrained);
            }
            next.insert(ghost.to_owned())
        } else {
            next.remove(ghost)
        };
        Ok(changed.then_some(next))
    }

    pub fn set_drained(&mut self, next: BTreeSet<String>, ghost: &str) {
        self.drained = next;
        if self.ghosts.contains_key(ghost) {
            self.fleet_changed.insert(ghost.to_owned());
        }
    }

    pub fn info(&self, id: &str, now: u64) -> Option<GhostInfo> {
        self.ghosts.get(id).map(|g| self.info_of(id, g, now))
    }

    /// Ghosts after `after` in ghost_id order, at most `limit` of them.
    pub fn page(&self, after: Option<String>, limit: usize, now: u64) -> GhostPage {
        use std::ops::Bound;
        let start = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let mut it = self.ghosts.range((start, Bound::Unbounded));
        let ghosts: Vec<GhostInfo> = it
            .by_ref()
            .take(limit)
            .map(|(id, g)| self.info_of(id, g, now))
            .collect();
        let next = it
            .next()
            .and_then(|_| ghosts.last().map(|g| g.ghost_id.clone()));
        GhostPage {
            ghosts,
            next,
            total: self.ghosts.len(),
        }
    }

    fn info_of(&self, id: &str, g: &GhostEntry<S>, now: u64) -> GhostInfo {
        GhostInfo {
            ghost_id: id.to_owned(),
            connected: g.connected(),
            session_id: g.session_id.clone(),
            peer: g.peer.clone(),
            registered_ms: g.registered_ms,
            last_event_ms: g.last_event_ms,
            events: g.events,
            heartbeats: g.heartbeats,
            last_heartbeat_ms: g.last_heartbeat_ms,
            last_seen_ms: g.last_event_ms.max(g.last_heartbeat_ms),
            session_commands: g.registration.has_capability(CAP_SESSION_COMMAND),
            labels: g.registration.labels.clone(),
            seeds: g.registration.seeds().to_vec(),
            local: id == self.cfg.local_ghost,
            via_admin: g.admin_addr.clone(),
            instance_id: g.registration.instance().map(str::to_owned),
            conflict: g
                .conflict
                .clone()
                .filter(|c| now.saturating_sub(c.last_ms) <= CONFLICT_STALE_MS),
            observed: self.observed.of(id),
            clock_skew_ms: self.clock_skew.get(id).copied(),
            clock_warning: self
                .clock_skew
                .get(id)
                .and_then(|s| crate::skew::warning(*s)),
            drained: self.drained.contains(id),
        }
    }

    fn view(&self, id: &str, g: &GhostEntry<S>) -> GhostView {
        GhostView {
            drained: self.drained.contains(id),
            disconnected_ms: g.disconnected_ms,
            observed: self
                .observed
                .of(id)
                .into_iter()
                .map(|(k, o)| (k, o.state))
                .collect(),
            connected: g.connected(),
            seeds: g
                .registration
                .seeds()
                .iter()
                .map(|s| {
                    let ops = (!s.operations.is_empty())
                        .then(|| s.operations.iter().map(|o| o.name.clone()).collect());
                    (s.id.clone(), ops)
                })
                .collect(),
            idempotent: g
                .registration
                .seeds()
                .iter()
                .flat_map(|s| {
                    s.operations
                        .iter()
                        .filter(|o| o.idempotent)
                        .map(|o| (s.id.clone(), o.name.clone()))
                })
                .collect(),
        }
    }

    /// Applies changed Ghosts to the shared snapshot now, so the next placement sees them.
    /// Copy-on-write: plans hold the snapshot only while handling a message, so this is
    /// usually an in-place O(log n) update, not a copy.
    pub fn flush_fleet(&mut self, fleet: &RefCell<Arc<FleetView>>) {
        if self.fleet_dirty {
            self.rebuild_fleet(fleet);
            self.fleet_changed.clear();
            return;
        }
        if self.fleet_changed.is_empty() {
            return;
        }
        let changed = std::mem::take(&mut self.fleet_changed);
        let mut cell = fleet.borrow_mut();
        let f = Arc::make_mut(&mut cell);
        for id in changed {
            match self.ghosts.get(&id) {
                Some(g) => {
                    f.ghosts.insert(id.clone(), self.view(&id, g));
                }
                None => {
                    f.ghosts.remove(&id);
                }
            }
        }
    }

    /// The whole snapshot anew (once, at start).
    pub fn rebuild_fleet(&mut self, fleet: &RefCell<Arc<FleetView>>) {
        if !self.fleet_dirty {
            return;
        }
        let mut f = FleetView {
            ghosts: BTreeMap::new(),
            local: (!self.cfg.local_ghost.is_empty()).then(|| self.cfg.local_ghost.clone()),
        };
        for (id, g) in &self.ghosts {
            f.ghosts.insert(id.clone(), self.view(id, g));
        }
        *fleet.borrow_mut() = Arc::new(f);
        self.fleet_dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(f: impl FnOnce(&mut MirageConfig)) -> Arc<MirageConfig> {
        let mut c = MirageConfig::default();
        f(&mut c);
        Arc::new(c)
    }

    fn reg(ghost: &str, instance: Option<&str>) -> Registration {
        let mut r = Registration {
            ghost_id: ghost.into(),
            peer_identity: ghost.into(),
            seed_list: Some(vec![]),
            ..Default::default()
        };
        r.instance_id = instance.map(str::to_owned);
        r
    }

    #[test]
    fn claim_rule() {
        // Nobody holds the id.
        assert_eq!(claim(None, Some("a")), Claim::Free);
        assert_eq!(claim(None, None), Claim::Free);
        // The same instance again: a reconnect, takes the session over.
        assert_eq!(claim(Some(Some("a")), Some("a")), Claim::Takeover);
        // Another instance while the holder lives: refused.
        assert_eq!(claim(Some(Some("a")), Some("b")), Claim::Conflict);
        // Either side without an instance_id (edgectl): today's takeover.
        assert_eq!(claim(Some(Some("a")), None), Claim::Takeover);
        assert_eq!(claim(Some(None), Some("b")), Claim::Takeover);
        assert_eq!(claim(Some(None), None), Claim::Takeover);
    }

    #[test]
    fn a_second_process_is_refused_and_the_same_one_takes_over() {
        let mut r: Registry<u32> = Registry::new(cfg(|_| {}), BTreeSet::new());
        let a = r.register(reg("g1", Some("a")), 1, "p1".into(), 1_000);
        let a = a.expect("first registration admitted");
        assert_eq!(a.ack.session_id.as_deref(), Some("g1#1"));
        assert!(a.replaced.is_none() && a.ghost_up);
        // Another instance while the holder lives: refused, and the conflict is shown.
        let no = r.register(reg("g1", Some("b")), 2, "p2".into(), 2_000);
        let no = no
            .err()
            .expect("conflicting claim refused")
            .ack("g1", 2_000);
        assert_eq!((no.status.as_str(), no.code), ("rejected", code::TRANSPORT));
        assert!(no.message.starts_with(REJECT_ID_CONFLICT), "{}", no.message);
        assert!(no.message.contains("g1#1"), "{}", no.message);
        let c = r.info("g1", 2_000).and_then(|i| i.conflict);
        assert_eq!(c.map(|c| (c.instance_id, c.refused)), Some(("b".into(), 1)));
        // The same instance again: the new session replaces the old one.
        let again = r.register(reg("g1", Some("a")), 3, "p1".into(), 3_000);
        let again = again.expect("takeover admitted");
        assert_eq!(again.replaced, Some(1));
        // Refused claims take no session number.
        assert_eq!(again.replaced_reason(), "replaced by session g1#2");
        // The old session's end does not disconnect the Ghost.
        assert!(!r.closed("g1", "g1#1", "session ended", 3_100));
        assert!(r.connected("g1"));
        assert!(r.closed("g1", "g1#2", "session ended", 3_200));
        assert!(!r.connected("g1"));
        assert_eq!(r.disconnected_count(), 1);
    }

    #[test]
    fn the_session_limit_counts_live_sessions_only() {
        let mut r: Registry<u32> = Registry::new(cfg(|c| c.limits.sessions = 1), BTreeSet::new());
        assert!(r.register(reg("g1", None), 1, "p".into(), 10).is_ok());
        let no = r.register(reg("g2", None), 2, "p".into(), 11).err();
        assert_eq!(
            no.map(|r| r.to_string()).as_deref(),
            Some("session limit of 1 reached")
        );
        // A takeover of the held id is not a new session.
        assert!(r.register(reg("g1", None), 3, "p".into(), 12).is_ok());
        assert!(r.closed("g1", "g1#2", "gone", 13));
        assert!(r.register(reg("g2", None), 4, "p".into(), 14).is_ok());
    }

    #[test]
    fn with_frame_auth_a_ghost_counts_only_once_verified() {
        let mut r: Registry<u32> = Registry::new(cfg(|c| c.auth.required = true), BTreeSet::new());
        let mut g = reg("g1", None);
        g.capabilities = vec![CAP_SESSION_COMMAND.to_owned()];
        let a = r.register(g, 7, "p".into(), 10).expect("admitted");
        assert!(!a.ghost_up);
        assert!(!r.connected("g1"));
        assert!(matches!(r.route("g1"), Route::Waiting));
        // Another session's verification is not this one's.
        assert!(!r.verified("g1", "g1#9"));
        assert!(r.verified("g1", "g1#1"));
        assert!(
            !r.verified("g1", "g1#1"),
            "only the first frame makes it usable"
        );
        assert!(matches!(r.route("g1"), Route::Session(7)));
    }

    #[test]
    fn commands_go_to_a_session_that_takes_them_else_wait() {
        let mut r: Registry<u32> = Registry::new(cfg(|_| {}), BTreeSet::new());
        assert!(matches!(r.route("nobody"), Route::Unknown));
        // An edgectl Ghost: a session without session.command, no admin entry.
        assert!(r.register(reg("edge", None), 1, "p".into(), 10).is_ok());
        assert!(matches!(r.route("edge"), Route::NoCommands));
        assert!(r.closed("edge", "edge#1", "gone", 11));
        assert!(matches!(r.route("edge"), Route::Waiting));
    }

    #[test]
    fn disconnected_ghosts_are_forgotten_oldest_first_past_the_bound() {
        let mut r: Registry<u32> = Registry::new(
            cfg(|c| {
                c.limits.disconnected_ghosts = 2;
                c.limits.disconnected_ghost_ms = 60_000;
            }),
            BTreeSet::new(),
        );
        for (i, g) in ["a", "b", "c"].iter().enumerate() {
            let t = 100 + i as u64;
            assert!(r.register(reg(g, None), i as u32, "p".into(), t).is_ok());
            assert!(r.closed(g, &format!("{g}#{}", i + 1), "gone", t));
        }
        // Three gone, two kept: the oldest went.
        assert_eq!((r.known(), r.disconnected_count()), (2, 2));
        assert!(!r.contains("a") && r.contains("b") && r.contains("c"));
        // Past the age bound the rest go too.
        r.evict_disconnected(100 + 60_001 + 2);
        assert_eq!((r.known(), r.disconnected_count()), (0, 0));
    }

    #[test]
    fn the_snapshot_follows_changes() {
        let mut r: Registry<u32> = Registry::new(cfg(|_| {}), BTreeSet::new());
        let fleet = RefCell::new(Arc::new(FleetView::default()));
        r.rebuild_fleet(&fleet);
        assert!(r.register(reg("g1", None), 1, "p".into(), 10).is_ok());
        assert!(fleet.borrow().ghosts.is_empty(), "not before the flush");
        r.flush_fleet(&fleet);
        assert!(fleet.borrow().ghosts.get("g1").is_some_and(|v| v.connected));
        let next = r.drain_change("g1", true).ok().flatten().expect("changes");
        r.set_drained(next, "g1");
        assert_eq!(r.drain_change("g1", true), Ok(None), "already drained");
        r.flush_fleet(&fleet);
        assert!(fleet.borrow().ghosts.get("g1").is_some_and(|v| v.drained));
    }
}
