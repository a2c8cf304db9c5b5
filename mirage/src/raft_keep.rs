//! `raft.keep` (issue 12): a plan step that keeps a raft-node cluster at its size. Mirage
//! expands it at submit into three ordinary raft-node steps whose checks Mirage answers
//! itself from the fleet snapshot (the members' observations and which Ghosts are gone), so
//! in a standing intent (`keep = "…"`) every re-check round re-reads the cluster:
//!
//! ```toml
//! keep = "5s"
//! [[step]]
//! operation = "raft.keep"
//! args = { voters = 3, gone_after = "10s" }
//! ```
//!
//! 1. `start` on a spare Ghost hosting raft-node (only while a replacement is due and its
//!    member is not running);
//! 2. `join` on that spare, via the leader's URI (added as a learner, then promoted);
//! 3. `leave` of the dead member, sent to the leader's Ghost, only once the replacement is a
//!    voter and only when the live voters left are still a majority of the configured size.
//!
//! A voter is dead when the Ghost whose member it is (by that Ghost's last raft-node
//! observation) has been disconnected for `gone_after`. Nothing is done while no connected
//! member is observed as leader, or while the live voters are not a quorum of the current
//! voters (no change could commit). Where a check fails the step's operation runs, and in a
//! re-check round that is a `corrective` report that names the members and Ghosts.
//!
//! Pure: no I/O, no clock (the plan passes `now`).

use std::collections::{BTreeMap, BTreeSet};

use shared::envelope::Args;

use crate::fleet::FleetView;
use crate::step::{fe, Check, FieldError, Intent, Offline, On, Step};
pub use crate::step::{Keep, Phase};

pub const OPERATION: &str = "raft.keep";
pub const SEED: &str = "raft-node";
/// A Ghost gone this long without `gone_after` counts as dead.
pub const DEFAULT_GONE_AFTER_MS: u64 = 30_000;
pub const DEFAULT_VOTERS: usize = 3;
/// Long enough for `join` (the seed waits up to 20 s for a learner to catch up and its
/// promotion to commit) and `leave`.
pub const DEFAULT_TIMEOUT_MS: u64 = 45_000;
pub const MAX_VOTERS: usize = 16;

/// Expands step `i` (a `raft.keep`).
pub fn expand(
    i: usize,
    seed: Option<&str>,
    args: &Args,
    timeout_ms: u64,
    retries: u32,
) -> Result<Vec<Step>, FieldError> {
    let f = |name: &str| format!("step[{i}].{name}");
    if let Some(s) = seed.map(str::trim).filter(|s| *s != SEED) {
        return Err(fe(
            f("seed"),
            format!("{OPERATION} keeps a {SEED} cluster; seed {s:?} is not {SEED}"),
        ));
    }
    if let Some(k) = args
        .keys()
        .find(|k| !["voters", "gone_after"].contains(&k.as_str()))
    {
        return Err(fe(
            f("args"),
            format!("unknown argument {k:?} (voters, gone_after)"),
        ));
    }
    let voters = match args.get("voters").map(|v| v.trim().parse::<usize>()) {
        None => DEFAULT_VOTERS,
        Some(Ok(n)) if (1..=MAX_VOTERS).contains(&n) => n,
        Some(_) => return Err(fe(f("args.voters"), format!("must be 1..={MAX_VOTERS}"))),
    };
    let gone_after_ms = match args.get("gone_after") {
        None => DEFAULT_GONE_AFTER_MS,
        Some(v) => match crate::step::parse_duration_ms(v) {
            Some(ms) if (1000..=crate::step::MAX_TIMEOUT_MS).contains(&ms) => ms,
            _ => {
                return Err(fe(
                    f("args.gone_after"),
                    format!("{v:?} must be a duration between 1s and 24h (e.g. 10s, 2m)"),
                ))
            }
        },
    };
    let step = |phase: Phase, operation: &str| Step {
        seed: SEED.into(),
        operation: operation.into(),
        args: Args::new(),
        on: On::One,
        blocking: false,
        timeout_ms,
        retries,
        // A failed correction must not end the standing intent: the next round re-reads
        // the cluster and tries again.
        continue_on_error: true,
        check: Some(Check {
            operation: String::new(),
            args: Args::new(),
            expect: None,
            observed: BTreeMap::new(),
            raft_keep: Some(Keep {
                phase,
                voters,
                gone_after_ms,
            }),
        }),
        offline: Offline::Skip,
        uri: None,
        locks: Vec::new(),
        hold_locks: false,
    };
    Ok(vec![
        step(Phase::Start, "start"),
        step(Phase::Join, "join"),
        step(Phase::Remove, "leave"),
    ])
}

/// One member of a cluster as a raft-node observation lists it
/// (`members = "id:voter@raft://h:p;id:learner@raft://h:p"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub voter: bool,
    pub uri: String,
}

pub fn parse_members(s: &str) -> Vec<Member> {
    s.split(';')
        .filter_map(|m| {
            let (id, rest) = m.trim().split_once(':')?;
            let (kind, uri) = rest.split_once('@')?;
            Some(Member {
                id: id.trim().parse().ok()?,
                voter: kind == "voter",
                uri: uri.trim().to_owned(),
            })
        })
        .collect()
}

/// A dead voter: its node id, its Ghost and how long that Ghost has been gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dead {
    pub id: u64,
    pub ghost: String,
    pub gone_ms: u64,
}

/// What the cluster needs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing dead (a Ghost gone for less than `gone_after` is not).
    Healthy,
    /// Something is wrong but Mirage must not act (no leader, no quorum, no spare, or the
    /// removal would leave too few live voters): why.
    Hold(String),
    /// Start (when `started` is false) and join a member on `ghost` via `via`.
    Add {
        ghost: String,
        started: bool,
        via: String,
        dead: Dead,
    },
    /// Remove `dead` through the leader's Ghost `on`.
    Remove {
        on: String,
        dead: Dead,
        live: Vec<String>,
    },
}

fn obs<'a>(fleet: &'a FleetView, ghost: &str) -> Option<&'a BTreeMap<String, String>> {
    fleet.ghosts.get(ghost)?.observed.get(SEED)
}

fn node_id(o: &BTreeMap<String, String>) -> Option<u64> {
    o.get("node_id")?.parse().ok()
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// Reads the cluster from the fleet snapshot.
pub fn decide(keep: &Keep, intent: &Intent, fleet: &FleetView, now: u64) -> Decision {
    let in_scope: Vec<(&String, &crate::fleet::GhostView)> = fleet
        .ghosts
        .iter()
        .filter(|(g, _)| intent.in_scope(g))
        .collect();
    // The leader as a connected member observes itself; the highest term wins.
    let leader = in_scope
        .iter()
        .filter(|(_, v)| v.connected)
        .filter_map(|(g, v)| {
            let o = v.observed.get(SEED)?;
            let me = node_id(o)?;
            let term: u64 = o.get("term")?.parse().ok()?;
            (o.get("role").map(String::as_str) == Some("leader")
                && o.get("leader").and_then(|l| l.parse().ok()) == Some(me))
            .then_some((term, g.as_str(), o))
        })
        .max_by_key(|(term, _, _)| *term);
    let Some((_, leader_ghost, lo)) = leader else {
        return Decision::Hold("no connected raft-node member is observed as leader".into());
    };
    let members = parse_members(lo.get("members").map(String::as_str).unwrap_or(""));
    let voters: BTreeSet<u64> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    // node id → (ghost, connected, gone since); a connected Ghost's claim wins.
    let mut owner: BTreeMap<u64, (&str, bool, u64)> = BTreeMap::new();
    for (g, v) in &in_scope {
        if let Some(id) = v.observed.get(SEED).and_then(node_id) {
            let e = owner
                .entry(id)
                .or_insert((g.as_str(), v.connected, v.disconnected_ms));
            if v.connected && !e.1 {
                *e = (g.as_str(), true, 0);
            }
        }
    }
    let live: Vec<String> = voters
        .iter()
        .filter_map(|id| owner.get(id).filter(|o| o.1).map(|o| o.0.to_owned()))
        .collect();
    let dead: Vec<Dead> = voters
        .iter()
        .filter_map(|id| {
            let (g, connected, since) = *owner.get(id)?;
            // Gone since an unknown time (0): not dead, Mirage cannot tell how long.
            let gone = (!connected && since > 0).then(|| now.saturating_sub(since))?;
            (gone >= keep.gone_after_ms).then(|| Dead {
                id: *id,
                ghost: g.to_owned(),
                gone_ms: gone,
            })
        })
        .collect();
    let Some(first) = dead.first().cloned() else {
        return Decision::Healthy;
    };
    let quorum = voters.len() / 2 + 1;
    if live.len() < quorum {
        return Decision::Hold(format!(
            "only {} of {} voters are on connected Ghosts, not a quorum: no membership change could commit",
            live.len(),
            voters.len()
        ));
    }
    let majority = keep.voters / 2 + 1;
    if voters.len() - dead.len() < keep.voters {
        // A spare: a connected Ghost in scope hosting raft-node whose member is not a voter.
        // A learner first (a join half done), then a running member, then any, by id.
        let learners: BTreeSet<u64> = members.iter().filter(|m| !m.voter).map(|m| m.id).collect();
        let spare = in_scope
            .iter()
            .filter(|(_, v)| v.connected && !v.drained && v.seeds.contains_key(SEED))
            .filter_map(|(g, v)| {
                let id = v.observed.get(SEED).and_then(node_id);
                if id.is_some_and(|id| voters.contains(&id)) {
                    return None;
                }
                let rank = match id {
                    Some(id) if learners.contains(&id) => 0,
                    Some(_) => 1,
                    None => 2,
                };
                Some((rank, g.as_str(), id.is_some()))
            })
            .min();
        let via = lo.get("uri").cloned().unwrap_or_default();
        return match spare {
            Some((_, g, started)) if !via.is_empty() => Decision::Add {
                ghost: g.to_owned(),
                started,
                via,
                dead: first,
            },
            _ => Decision::Hold(format!(
                "member {} on {} gone {}: no spare connected Ghost in {} hosts {SEED} to replace it",
                first.id,
                first.ghost,
                secs(first.gone_ms),
                intent.target_scope
            )),
        };
    }
    // The dead member is not counted live: the guard is that the live voters left are a
    // majority of the size the cluster is kept at.
    if live.len() < majority {
        return Decision::Hold(format!(
            "removing member {} would leave {} live voter(s), fewer than a majority ({majority}) of {}",
            first.id,
            live.len(),
            keep.voters
        ));
    }
    Decision::Remove {
        on: leader_ghost.to_owned(),
        dead: first,
        live,
    }
}

/// The Ghost a connected raft-node member runs on, the leader's first: where a check that
/// finds nothing to do is answered.
fn any_member(intent: &Intent, fleet: &FleetView) -> Option<String> {
    let hosts: Vec<&String> = fleet
        .ghosts
        .iter()
        .filter(|(g, v)| intent.in_scope(g) && v.connected && v.seeds.contains_key(SEED))
        .map(|(g, _)| g)
        .collect();
    hosts
        .iter()
        .find(|g| {
            obs(fleet, g)
                .and_then(|o| o.get("role"))
                .map(String::as_str)
                == Some("leader")
        })
        .or_else(|| hosts.first())
        .map(|g| (*g).clone())
}

/// Where the step runs and with which arguments: the Ghost the correction is for, or (when
/// this phase has nothing to do) a member that answers the check.
pub fn placement(
    keep: &Keep,
    intent: &Intent,
    fleet: &FleetView,
    now: u64,
) -> Result<(Vec<String>, Option<Args>), String> {
    let act = match (keep.phase, decide(keep, intent, fleet, now)) {
        (Phase::Start, Decision::Add { ghost, started, .. }) if !started => {
            Some((ghost, Args::new()))
        }
        (Phase::Join, Decision::Add { ghost, via, .. }) => {
            Some((ghost, Args::from([("via".to_owned(), via)])))
        }
        (Phase::Remove, Decision::Remove { on, dead, .. }) => Some((
            on,
            Args::from([("node_id".to_owned(), dead.id.to_string())]),
        )),
        _ => None,
    };
    match act {
        Some((g, args)) => Ok((vec![g], Some(args))),
        None => any_member(intent, fleet)
            .map(|g| (vec![g], None))
            .ok_or_else(|| format!("no connected ghost in {} hosts {SEED}", intent.target_scope)),
    }
}

/// The check: Ok where this phase has nothing to do, else the drift as the report says it.
pub fn check(keep: &Keep, intent: &Intent, fleet: &FleetView, now: u64) -> Result<(), String> {
    match (keep.phase, decide(keep, intent, fleet, now)) {
        (Phase::Start, Decision::Add { ghost, started, dead, .. }) if !started => Err(format!(
            "member {} on {} gone {} (gone_after {}): starting a replacement member on {ghost}",
            dead.id,
            dead.ghost,
            secs(dead.gone_ms),
            secs(keep.gone_after_ms)
        )),
        (Phase::Join, Decision::Add { ghost, via, dead, .. }) => Err(format!(
            "member {} on {} gone {} (gone_after {}): {ghost} joins as its replacement via {via} (learner, then voter)",
            dead.id,
            dead.ghost,
            secs(dead.gone_ms),
            secs(keep.gone_after_ms)
        )),
        (Phase::Remove, Decision::Remove { dead, live, .. }) => Err(format!(
            "member {} on {} gone {} (gone_after {}) is replaced (live voters on {}): removing member {}",
            dead.id,
            dead.ghost,
            secs(dead.gone_ms),
            secs(keep.gone_after_ms),
            live.join(", "),
            dead.id
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::GhostView;

    const NOW: u64 = 100_000;

    fn keep(phase: Phase) -> Keep {
        Keep {
            phase,
            voters: 3,
            gone_after_ms: 10_000,
        }
    }

    fn intent() -> Intent {
        crate::intent::parse(
            "actor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\nkeep=\"2s\"\n[[step]]\noperation=\"raft.keep\"\nargs={voters=3,gone_after=\"10s\"}\n",
            || "k".into(),
        )
        .unwrap()
    }

    /// A Ghost hosting raft-node; `member`: (node id, role, members) it observes.
    fn ghost(
        f: &mut FleetView,
        g: &str,
        gone_since: Option<u64>,
        member: Option<(u64, &str, &str)>,
    ) {
        let mut v = GhostView {
            connected: gone_since.is_none(),
            disconnected_ms: gone_since.unwrap_or(0),
            ..Default::default()
        };
        v.seeds.insert(SEED.into(), None);
        if let Some((id, role, members)) = member {
            let leader = if role == "leader" {
                id.to_string()
            } else {
                String::new()
            };
            v.observed.insert(
                SEED.into(),
                BTreeMap::from([
                    ("node_id".into(), id.to_string()),
                    ("role".into(), role.into()),
                    ("term".into(), "4".into()),
                    ("leader".into(), leader),
                    ("uri".into(), format!("raft://127.0.0.1:{}", 7000 + id)),
                    ("members".into(), members.into()),
                ]),
            );
        }
        f.ghosts.insert(g.into(), v);
    }

    fn members(ids: &[u64]) -> String {
        ids.iter()
            .map(|i| format!("{i}:voter@raft://127.0.0.1:{}", 7000 + i))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// g1 (leader, 1), g2 (2), g3 (3) and a spare g4; g3 gone since `g3_gone`.
    fn three_and_a_spare(g3_gone: Option<u64>) -> FleetView {
        let m = members(&[1, 2, 3]);
        let mut f = FleetView::default();
        ghost(&mut f, "g1", None, Some((1, "leader", &m)));
        ghost(&mut f, "g2", None, Some((2, "follower", &m)));
        ghost(&mut f, "g3", g3_gone, Some((3, "follower", &m)));
        ghost(&mut f, "g4", None, None);
        f
    }

    #[test]
    fn the_step_expands_to_three_raft_node_steps_and_bad_args_are_refused() {
        let i = intent();
        let ops: Vec<&str> = i.steps.iter().map(|s| s.operation.as_str()).collect();
        assert_eq!(ops, ["start", "join", "leave"]);
        assert!(i
            .steps
            .iter()
            .all(|s| s.seed == SEED && s.continue_on_error));
        let k = i.steps[2]
            .check
            .as_ref()
            .unwrap()
            .raft_keep
            .clone()
            .unwrap();
        assert_eq!(
            (k.phase, k.voters, k.gone_after_ms),
            (Phase::Remove, 3, 10_000)
        );
        for (args, field) in [
            ("{voters=0}", "step[0].args.voters"),
            ("{gone_after=\"soon\"}", "step[0].args.gone_after"),
            ("{gone_after=\"10ms\"}", "step[0].args.gone_after"),
            ("{size=3}", "step[0].args"),
        ] {
            let e = crate::intent::parse(
                &format!("actor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\noperation=\"raft.keep\"\nargs={args}\n"),
                || "k".into(),
            )
            .unwrap_err();
            assert_eq!(e.field, field, "{args}");
        }
        let e = crate::intent::parse(
            "actor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"raft.keep\"\n",
            || "k".into(),
        )
        .unwrap_err();
        assert_eq!(e.field, "step[0].seed");
    }

    #[test]
    fn members_parse() {
        let m = parse_members("7:voter@raft://127.0.0.1:1;9:learner@raft://127.0.0.1:2;bad");
        assert_eq!(m.len(), 2);
        assert!(m[0].voter && !m[1].voter && m[1].id == 9);
        assert!(parse_members("").is_empty());
    }

    #[test]
    fn a_member_gone_past_gone_after_is_replaced_then_removed() {
        let i = intent();
        // Gone 5 s of 10: not yet.
        let f = three_and_a_spare(Some(NOW - 5_000));
        assert_eq!(decide(&keep(Phase::Start), &i, &f, NOW), Decision::Healthy);
        for p in [Phase::Start, Phase::Join, Phase::Remove] {
            assert!(check(&keep(p), &i, &f, NOW).is_ok());
            // Nothing to do: the check is answered on the leader's Ghost.
            assert_eq!(
                placement(&keep(p), &i, &f, NOW).unwrap(),
                (vec!["g1".to_owned()], None)
            );
        }
        // Gone 12 s: start on the spare, then join it via the leader; no removal yet.
        let f = three_and_a_spare(Some(NOW - 12_000));
        let why = check(&keep(Phase::Start), &i, &f, NOW).unwrap_err();
        assert!(
            why.contains("member 3 on g3 gone 12.0s") && why.contains("on g4"),
            "{why}"
        );
        assert_eq!(
            placement(&keep(Phase::Start), &i, &f, NOW).unwrap(),
            (vec!["g4".to_owned()], Some(Args::new()))
        );
        let (g, a) = placement(&keep(Phase::Join), &i, &f, NOW).unwrap();
        assert_eq!(g, ["g4"]);
        assert_eq!(a.unwrap()["via"], "raft://127.0.0.1:7001");
        assert!(check(&keep(Phase::Remove), &i, &f, NOW).is_ok());
        // g4 started (observed, not a member): no start again, still the join.
        let mut f2 = f.clone();
        ghost(&mut f2, "g4", None, Some((4, "learner", "")));
        assert!(check(&keep(Phase::Start), &i, &f2, NOW).is_ok());
        assert!(check(&keep(Phase::Join), &i, &f2, NOW).is_err());
        // g4 is a voter (the leader's view has 4 voters): remove the dead member via the
        // leader, naming the live voters.
        let m = members(&[1, 2, 3, 4]);
        let mut f3 = f.clone();
        ghost(&mut f3, "g1", None, Some((1, "leader", &m)));
        ghost(&mut f3, "g4", None, Some((4, "follower", &m)));
        assert!(check(&keep(Phase::Join), &i, &f3, NOW).is_ok());
        let why = check(&keep(Phase::Remove), &i, &f3, NOW).unwrap_err();
        assert!(
            why.contains("g1, g2, g4") && why.contains("removing member 3"),
            "{why}"
        );
        let (g, a) = placement(&keep(Phase::Remove), &i, &f3, NOW).unwrap();
        assert_eq!(g, ["g1"]);
        assert_eq!(a.unwrap()["node_id"], "3");
        // Removed: healthy again.
        let m = members(&[1, 2, 4]);
        ghost(&mut f3, "g1", None, Some((1, "leader", &m)));
        assert_eq!(
            decide(&keep(Phase::Remove), &i, &f3, NOW),
            Decision::Healthy
        );
    }

    #[test]
    fn no_leader_no_spare_or_no_quorum_means_no_action() {
        let i = intent();
        // No connected member observes itself leader (the dead one's stale view does).
        let m = members(&[1, 2, 3]);
        let mut f = FleetView::default();
        ghost(&mut f, "g1", Some(NOW - 20_000), Some((1, "leader", &m)));
        ghost(&mut f, "g2", None, Some((2, "candidate", &m)));
        ghost(&mut f, "g3", None, Some((3, "follower", &m)));
        ghost(&mut f, "g4", None, None);
        assert!(
            matches!(decide(&keep(Phase::Start), &i, &f, NOW), Decision::Hold(w) if w.contains("leader"))
        );
        // No spare.
        let mut f = three_and_a_spare(Some(NOW - 20_000));
        f.ghosts.remove("g4");
        assert!(
            matches!(decide(&keep(Phase::Join), &i, &f, NOW), Decision::Hold(w) if w.contains("no spare"))
        );
        // A Ghost gone since an unknown time (Mirage restarted) is not counted dead.
        let f = three_and_a_spare(Some(0));
        assert_eq!(decide(&keep(Phase::Start), &i, &f, NOW), Decision::Healthy);
        // Ghosts outside the scope are neither members nor spares.
        let mut scoped = i.clone();
        scoped.target_scope = "ghost:edge-*".into();
        let f = three_and_a_spare(Some(NOW - 20_000));
        assert!(matches!(
            decide(&keep(Phase::Start), &scoped, &f, NOW),
            Decision::Hold(_)
        ));
    }

    #[test]
    fn the_quorum_guard_never_removes_below_a_majority() {
        let i = intent();
        // 2 of 3 gone: the one live voter is no quorum; nothing is added or removed.
        let m = members(&[1, 2, 3]);
        let mut f = FleetView::default();
        ghost(&mut f, "g1", None, Some((1, "leader", &m)));
        ghost(&mut f, "g2", Some(NOW - 30_000), Some((2, "follower", &m)));
        ghost(&mut f, "g3", Some(NOW - 30_000), Some((3, "follower", &m)));
        ghost(&mut f, "g4", None, None);
        let d = decide(&keep(Phase::Remove), &i, &f, NOW);
        assert!(
            matches!(&d, Decision::Hold(w) if w.contains("not a quorum")),
            "{d:?}"
        );
        for p in [Phase::Start, Phase::Join, Phase::Remove] {
            assert!(check(&keep(p), &i, &f, NOW).is_ok());
        }
        // The replacement joined (4 voters: 1, 2, 4 live, 3 dead): removal is allowed.
        let m = members(&[1, 2, 3, 4]);
        let mut f = FleetView::default();
        ghost(&mut f, "g1", None, Some((1, "leader", &m)));
        ghost(&mut f, "g2", None, Some((2, "follower", &m)));
        ghost(&mut f, "g3", Some(NOW - 30_000), Some((3, "follower", &m)));
        ghost(&mut f, "g4", None, Some((4, "follower", &m)));
        assert!(matches!(
            decide(&keep(Phase::Remove), &i, &f, NOW),
            Decision::Remove { dead, .. } if dead.id == 3
        ));
        // 2 of the old 3 gone as well: 2 live of 4 voters is no quorum, so no removal.
        ghost(&mut f, "g2", Some(NOW - 30_000), Some((2, "follower", &m)));
        let d = decide(&keep(Phase::Remove), &i, &f, NOW);
        assert!(matches!(&d, Decision::Hold(_)), "{d:?}");
        assert!(check(&keep(Phase::Remove), &i, &f, NOW).is_ok());
        // A member gone for less than gone_after is neither dead nor live: with 1 and 4 live,
        // 2 pending and 3 dead, the live voters are no quorum of 4 either.
        ghost(&mut f, "g2", Some(NOW - 1_000), Some((2, "follower", &m)));
        assert!(matches!(
            decide(&keep(Phase::Remove), &i, &f, NOW),
            Decision::Hold(_)
        ));
    }

    #[test]
    fn a_standing_plan_reports_the_drift_and_dispatches_the_correction() {
        use crate::plan::{Effect, Input, Plan, Status};
        use shared::envelope::CompletionState;
        let mut p = Plan::new(intent(), 1);
        let dispatched = |fx: &[Effect]| -> Vec<(String, String, Args)> {
            fx.iter()
                .filter_map(|e| match e {
                    Effect::Dispatch { ghost, command, .. } => Some((
                        ghost.clone(),
                        command.operation.clone(),
                        command.args.clone(),
                    )),
                    _ => None,
                })
                .collect()
        };
        // Healthy: every check is answered here, nothing is sent, the intent is satisfied.
        let fx = p.handle(Input::Start, NOW, &three_and_a_spare(None));
        assert!(dispatched(&fx).is_empty(), "{fx:?}");
        assert_eq!(p.status, Status::Satisfied);
        // g3 gone 12 s at the next re-check: a corrective report naming the member and the
        // Ghosts, and `start` on the spare.
        let later = NOW + 2_000;
        let fx = p.handle(Input::Tick, later, &three_and_a_spare(Some(later - 12_000)));
        let corrective: Vec<&str> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Report(r) if r.state == CompletionState::Corrective => {
                    Some(r.summary.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(corrective.len(), 1, "{fx:?}");
        assert!(
            corrective[0].contains("drift: step 1/3")
                && corrective[0].contains("member 3 on g3 gone 12.0s")
                && corrective[0].contains("replacement member on g4"),
            "{}",
            corrective[0]
        );
        assert_eq!(
            dispatched(&fx),
            [("g4".to_owned(), "start".to_owned(), Args::new())]
        );
    }
}
