//! Observations (shared::observe): the latest observed state per ghost/seed, bounded, in
//! memory (an observation is current state, not history: a Ghost re-publishes it). The
//! Supervisor feeds it from event ingest before any plan routing, so an observation can never
//! complete or fail a step; `GET /v1/ghosts/{id}` and `/v1/services` show it.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use shared::envelope::Event;

/// Seeds with an observation per Ghost, and entries in all.
pub const MAX_PER_GHOST: usize = 64;
pub const MAX_TOTAL: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observed {
    pub state: BTreeMap<String, String>,
    /// When the seed made it (the Ghost's clock).
    pub at_ms: u64,
    /// When this Mirage received it.
    pub received_ms: u64,
    pub event_id: String,
}

#[derive(Debug, Default)]
pub struct Observations {
    by_ghost: HashMap<String, BTreeMap<String, Observed>>,
    total: usize,
    /// Observations refused (invalid or past a bound) and entries evicted to make room.
    pub refused: u64,
    pub evicted: u64,
}

impl Observations {
    /// Keeps `e` if it is newer than what is held for its ghost/seed. Errors say why not.
    pub fn record(&mut self, ghost_id: &str, e: &Event, now_ms: u64) -> Result<(), String> {
        let state = shared::observe::state_of(e).inspect_err(|_| self.refused += 1)?;
        let at_ms = e.timestamp_ms.unwrap_or(now_ms);
        let o = Observed {
            state,
            at_ms,
            received_ms: now_ms,
            event_id: e.event_id.clone(),
        };
        let key = instance_key(e.seed_id.trim(), &o.state);
        let seed = key.as_str();
        if let Some(held) = self
            .by_ghost
            .get_mut(ghost_id)
            .and_then(|m| m.get_mut(seed))
        {
            // A re-sent older observation must not replace a newer one.
            if held.at_ms <= at_ms {
                *held = o;
            }
            return Ok(());
        }
        let n_ghost = self.by_ghost.get(ghost_id).map_or(0, |m| m.len());
        if n_ghost >= MAX_PER_GHOST {
            self.refused += 1;
            return Err(format!(
                "ghost {ghost_id} already has observations of {MAX_PER_GHOST} seeds; {seed} refused"
            ));
        }
        if self.total >= MAX_TOTAL {
            self.evict_oldest();
        }
        self.by_ghost
            .entry(ghost_id.to_owned())
            .or_default()
            .insert(seed.to_owned(), o);
        self.total += 1;
        Ok(())
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .by_ghost
            .iter()
            .flat_map(|(g, m)| m.iter().map(move |(s, o)| (o.received_ms, g, s)))
            .min()
            .map(|(_, g, s)| (g.clone(), s.clone()));
        if let Some((g, s)) = oldest {
            if let Some(m) = self.by_ghost.get_mut(&g) {
                m.remove(&s);
                if m.is_empty() {
                    self.by_ghost.remove(&g);
                }
            }
            self.total -= 1;
            self.evicted += 1;
        }
    }

    pub fn of(&self, ghost_id: &str) -> BTreeMap<String, Observed> {
        self.by_ghost.get(ghost_id).cloned().unwrap_or_default()
    }

    /// A Ghost that left the registry takes its observations with it.
    pub fn forget(&mut self, ghost_id: &str) {
        if let Some(m) = self.by_ghost.remove(ghost_id) {
            self.total -= m.len();
        }
    }

    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// Observations are kept per seed instance: `seed.service/web` when the state names its
/// `service` (or `instance`), else the seed id.
pub fn instance_key(seed: &str, state: &BTreeMap<String, String>) -> String {
    match state.get("service").or_else(|| state.get("instance")) {
        Some(i) if !i.is_empty() => format!("{seed}/{i}"),
        _ => seed.to_owned(),
    }
}

/// Observations of one seed (its instances too) among a Ghost's.
pub fn of_seed<'a>(
    all: &'a BTreeMap<String, Observed>,
    seed: &'a str,
) -> impl Iterator<Item = (&'a String, &'a Observed)> + 'a {
    all.iter().filter(move |(k, _)| {
        k.as_str() == seed || k.strip_prefix(seed).is_some_and(|r| r.starts_with('/'))
    })
}

/// The URIs an observation advertises: its `uri` value, comma-separated.
pub fn uris(o: &Observed) -> Vec<String> {
    o.state
        .get("uri")
        .map(|u| {
            u.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(seed: &str, at: u64, k: &str, v: &str) -> Event {
        shared::observe::event("g1", seed, &[(k.to_owned(), v.to_owned())].into(), at, 1)
    }

    #[test]
    fn keeps_the_newest_per_seed() {
        let mut o = Observations::default();
        o.record("g1", &obs("seed.a", 10, "state", "running"), 100)
            .unwrap();
        o.record("g1", &obs("seed.a", 20, "state", "exited"), 101)
            .unwrap();
        // Older, re-sent: ignored.
        o.record("g1", &obs("seed.a", 15, "state", "running"), 102)
            .unwrap();
        assert_eq!(o.of("g1")["seed.a"].state["state"], "exited");
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn bounded_per_ghost_and_in_total() {
        let mut o = Observations::default();
        for i in 0..MAX_PER_GHOST {
            o.record("g1", &obs(&format!("seed.s{i}"), 1, "k", "v"), 1)
                .unwrap();
        }
        let err = o
            .record("g1", &obs("seed.more", 1, "k", "v"), 1)
            .unwrap_err();
        assert!(err.contains("seed.more"), "{err}");
        assert_eq!(o.refused, 1);
        o.forget("g1");
        assert!(o.is_empty());
        let mut bad = obs("seed.a", 1, "k", "v");
        bad.stdout = Some(bytes::Bytes::from_static(b"not json"));
        assert!(o.record("g1", &bad, 1).is_err());
    }

    #[test]
    fn instances_of_one_seed_are_kept_apart() {
        let mut o = Observations::default();
        o.record("g1", &obs("seed.service", 1, "service", "web"), 1)
            .unwrap();
        o.record("g1", &obs("seed.service", 1, "service", "db"), 1)
            .unwrap();
        o.record("g1", &obs("seed.services2", 1, "k", "v"), 1)
            .unwrap();
        let all = o.of("g1");
        let keys: Vec<&String> = of_seed(&all, "seed.service").map(|(k, _)| k).collect();
        assert_eq!(keys, ["seed.service/db", "seed.service/web"]);
    }

    #[test]
    fn uris_are_split() {
        let mut o = Observations::default();
        o.record(
            "g1",
            &obs(
                "seed.redis",
                1,
                "uri",
                "redis://127.0.0.1:1/0, redis://x:2/0",
            ),
            1,
        )
        .unwrap();
        assert_eq!(
            uris(&o.of("g1")["seed.redis"]),
            ["redis://127.0.0.1:1/0", "redis://x:2/0"]
        );
    }
}
