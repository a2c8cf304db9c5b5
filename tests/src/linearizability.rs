//! A linearizability checker for a key-value store (Wing & Gong's search with Lowe's
//! memoization, as Porcupine does): a history of put/get/delete operations with their call
//! and return times is linearizable when every key's sub-history is (linearizability is
//! local), i.e. when the operations can be put in one order that respects real time (an
//! operation that returned before another was called comes first) and in which every get
//! returns the latest put (or none after a delete / before any put).
//!
//! An operation whose outcome is unknown (a timeout, a dead server) has no return time: it
//! may take effect at any point after its call, or never. Values should be unique per put:
//! then an unknown put whose value nobody read is dropped before the search (it can always be
//! placed where it is overwritten unseen), which keeps the search small.

use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String),
    Delete,
    /// What the read returned (`None` = no such key).
    Get(Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub key: String,
    pub op: Op,
    /// When the client called it and when the answer came (any clock shared by all
    /// clients); `ret = None` = the outcome is unknown.
    pub call: u64,
    pub ret: Option<u64>,
}

/// Ok, or the first key whose history is not linearizable (with its size).
pub fn check(history: &[Event]) -> Result<(), String> {
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in history {
        by_key.entry(e.key.as_str()).or_default().push(e);
    }
    for (key, evs) in by_key {
        match check_register(&evs) {
            Some(true) => {}
            Some(false) => {
                return Err(format!(
                    "key {key:?}: its {} operations have no linearization",
                    evs.len()
                ))
            }
            None => {
                return Err(format!(
                    "key {key:?}: gave up after {MAX_STATES} search states ({} operations)",
                    evs.len()
                ))
            }
        }
    }
    Ok(())
}

/// Search states visited per key at most; past it the check fails (never a silent pass).
pub const MAX_STATES: usize = 2_000_000;

/// One key as a register whose state is `Option<value>`; `None` = gave up.
fn check_register(evs: &[&Event]) -> Option<bool> {
    let read: HashSet<&str> = evs
        .iter()
        .filter_map(|e| match &e.op {
            Op::Get(Some(v)) => Some(v.as_str()),
            _ => None,
        })
        .collect();
    // Unknown gets constrain nothing; unknown puts of a value never read can always be
    // linearized right before a later write or never.
    let mut ops: Vec<&Event> = evs
        .iter()
        .copied()
        .filter(|e| match (&e.op, e.ret) {
            (_, Some(_)) => true,
            (Op::Get(_), None) => false,
            (Op::Put(v), None) => read.contains(v.as_str()),
            (Op::Delete, None) => true,
        })
        .collect();
    ops.sort_by_key(|e| e.call);
    let n = ops.len();
    // Intern values: the state is an index (0 = absent).
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut val = |v: &Option<String>| -> u32 {
        match v {
            None => 0,
            Some(s) => {
                let next = ids.len() as u32 + 1;
                *ids.entry(s.clone()).or_insert(next)
            }
        }
    };
    #[derive(Clone, Copy)]
    enum K {
        Put(u32),
        Delete,
        Get(u32),
    }
    let kinds: Vec<K> = ops
        .iter()
        .map(|e| match &e.op {
            Op::Put(v) => K::Put(val(&Some(v.clone()))),
            Op::Delete => K::Delete,
            Op::Get(v) => K::Get(val(v)),
        })
        .collect();
    let call: Vec<u64> = ops.iter().map(|e| e.call).collect();
    let ret: Vec<u64> = ops.iter().map(|e| e.ret.unwrap_or(u64::MAX)).collect();
    let must: usize = ops.iter().filter(|e| e.ret.is_some()).count();

    let words = n.div_ceil(64).max(1);
    let mut seen: HashSet<(Vec<u64>, u32)> = HashSet::new();
    // Depth-first over (done set, state), with an explicit stack of (set, state, done count).
    let mut stack: Vec<(Vec<u64>, u32, usize)> = vec![(vec![0; words], 0, 0)];
    let is_done = |set: &[u64], i: usize| set[i / 64] >> (i % 64) & 1 == 1;
    while let Some((set, state, done_must)) = stack.pop() {
        if done_must == must {
            return Some(true);
        }
        if !seen.insert((set.clone(), state)) {
            continue;
        }
        if seen.len() > MAX_STATES {
            return None;
        }
        // The next operation must have been called before every pending one returned.
        let horizon = (0..n)
            .filter(|i| !is_done(&set, *i))
            .map(|i| ret[i])
            .min()
            .unwrap_or(u64::MAX);
        // Unknown deletes are interchangeable: only the earliest-called unused one is tried
        // (any linearization using a later one can use it instead), which keeps the search
        // linear in their number rather than exponential.
        let first_unknown_delete = (0..n)
            .find(|i| matches!(kinds[*i], K::Delete) && ret[*i] == u64::MAX && !is_done(&set, *i));
        for i in 0..n {
            if is_done(&set, i) {
                continue;
            }
            if call[i] > horizon {
                break; // sorted by call: none later qualifies either
            }
            let next = match kinds[i] {
                K::Put(v) => v,
                K::Delete if ret[i] == u64::MAX && Some(i) != first_unknown_delete => continue,
                K::Delete => 0,
                K::Get(v) if v == state => state,
                K::Get(_) => continue,
            };
            let mut s2 = set.clone();
            s2[i / 64] |= 1 << (i % 64);
            let d2 = done_must + usize::from(ret[i] != u64::MAX);
            stack.push((s2, next, d2));
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn put(k: &str, v: &str, call: u64, ret: u64) -> Event {
        Event {
            key: k.into(),
            op: Op::Put(v.into()),
            call,
            ret: Some(ret),
        }
    }
    fn get(k: &str, v: Option<&str>, call: u64, ret: u64) -> Event {
        Event {
            key: k.into(),
            op: Op::Get(v.map(String::from)),
            call,
            ret: Some(ret),
        }
    }
    fn del(k: &str, call: u64, ret: u64) -> Event {
        Event {
            key: k.into(),
            op: Op::Delete,
            call,
            ret: Some(ret),
        }
    }
    fn unknown(mut e: Event) -> Event {
        e.ret = None;
        e
    }

    #[test]
    fn sequential_and_overlapping_histories_are_linearizable() {
        let h = vec![
            get("a", None, 0, 1),
            put("a", "1", 2, 3),
            get("a", Some("1"), 4, 5),
            del("a", 6, 7),
            get("a", None, 8, 9),
        ];
        assert!(check(&h).is_ok());
        // A read overlapping a put may see either value.
        let h = vec![
            put("a", "1", 0, 1),
            put("a", "2", 2, 10),
            get("a", Some("1"), 3, 4),
            get("a", Some("2"), 5, 6),
        ];
        assert!(check(&h).is_ok());
        // Concurrent puts may take effect in either order.
        let h = vec![
            put("a", "x", 0, 10),
            put("a", "y", 1, 9),
            get("a", Some("x"), 11, 12),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn a_stale_read_is_not_linearizable() {
        let h = vec![
            put("a", "1", 0, 1),
            put("a", "2", 2, 3),
            get("a", Some("1"), 4, 5),
        ];
        assert!(check(&h).unwrap_err().contains("\"a\""));
    }

    #[test]
    fn reads_cannot_go_back_in_time() {
        // Once a read saw 2, a later read cannot see 1 again (while 2's put is still running).
        let h = vec![
            put("a", "1", 0, 1),
            put("a", "2", 2, 10),
            get("a", Some("2"), 3, 4),
            get("a", Some("1"), 5, 6),
        ];
        assert!(check(&h).is_err());
        // A read of a value nobody wrote.
        assert!(check(&[put("a", "1", 0, 1), get("a", Some("9"), 2, 3)]).is_err());
        // A deleted key read back.
        assert!(check(&[
            put("a", "1", 0, 1),
            del("a", 2, 3),
            get("a", Some("1"), 4, 5)
        ])
        .is_err());
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let base = || vec![put("a", "1", 0, 1), unknown(put("a", "2", 2, 3))];
        let mut late = base();
        late.push(get("a", Some("1"), 4, 5));
        late.push(get("a", Some("2"), 20, 21));
        assert!(check(&late).is_ok(), "took effect late");
        let mut never = base();
        never.push(get("a", Some("1"), 30, 31));
        assert!(check(&never).is_ok(), "never took effect");
        // But not before it was called.
        let h = vec![get("a", Some("2"), 0, 1), unknown(put("a", "2", 2, 3))];
        assert!(check(&h).is_err());
        // And once seen, the older value cannot come back.
        let mut back = base();
        back.push(get("a", Some("2"), 4, 5));
        back.push(get("a", Some("1"), 6, 7));
        assert!(check(&back).is_err());
        // An unknown delete may explain a missing key.
        let h = vec![
            put("a", "1", 0, 1),
            unknown(del("a", 2, 3)),
            get("a", None, 4, 5),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn many_unknown_deletes_do_not_blow_up_the_search() {
        // 60 deletes that timed out while puts and reads went on: 2^60 subsets if each were
        // tried apart.
        let mut h = Vec::new();
        for i in 0..60u64 {
            h.push(unknown(del("a", i * 10, i * 10 + 1)));
        }
        for i in 0..200u64 {
            let t = 1000 + i * 10;
            let v = format!("v{i}");
            h.push(put("a", &v, t, t + 2));
            h.push(get("a", Some(&v), t + 3, t + 4));
            // 50 reads of no key: each needs one of the 60 unknown deletes.
            let after = if i % 4 == 0 { None } else { Some(v.as_str()) };
            h.push(get("a", after, t + 5, t + 6));
        }
        let t0 = std::time::Instant::now();
        assert!(check(&h).is_ok());
        assert!(t0.elapsed() < std::time::Duration::from_secs(10));
        // A None that no delete (known or unknown, called before it) can explain.
        let h = vec![
            put("a", "1", 10, 11),
            get("a", None, 12, 13),
            unknown(del("a", 20, 21)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn keys_are_checked_apart_and_a_long_history_is_fast() {
        // Three clients, overlapping in lockstep, 3,000 operations over 4 keys, all
        // consistent with a register per key.
        let mut h = Vec::new();
        let mut cur: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut t = 0u64;
        for round in 0..1000u64 {
            let key = format!("k{}", round % 4);
            let v = format!("v{round}");
            // Client 0 puts, client 1 reads concurrently (may see old or new), client 2 reads after.
            let old = cur.get(&key).cloned().flatten();
            h.push(put(&key, &v, t, t + 3));
            h.push(get(
                &key,
                if round % 2 == 0 {
                    old.as_deref()
                } else {
                    Some(&v)
                },
                t + 1,
                t + 2,
            ));
            h.push(get(&key, Some(&v), t + 4, t + 5));
            cur.insert(key, Some(v));
            t += 6;
        }
        let t0 = std::time::Instant::now();
        assert!(check(&h).is_ok());
        assert!(t0.elapsed() < std::time::Duration::from_secs(10));
        // One stale read in the middle breaks it, and is found on its key.
        let i = h.len() / 2 + 2;
        assert!(matches!(h[i].op, Op::Get(Some(_))));
        h[i].op = Op::Get(Some("v0".into()));
        let e = check(&h).unwrap_err();
        assert!(e.contains(&format!("{:?}", h[i].key)), "{e}");
    }
}
