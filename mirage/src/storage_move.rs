//! `storage.move` (issue 14): one plan step that Mirage expands at submit into the ordered
//! seed.redis steps of a move between two Ghosts. Pure: no I/O but the token's randomness.
//!
//! ```toml
//! [[step]]
//! operation = "storage.move"
//! args = { source = "redis://ghost.local/cache", target = "redis://ghost.2:6391/cache",
//!          transfer_port = 7390, source_after = "keep" }
//! timeout = "10m"
//! ```
//!
//! becomes one lock set: each step blocking, holding both seed locks (`ghost::seed.redis`,
//! sorted) and handing them on to the next (`hold_locks`), so the locks are taken before the
//! snapshot and released only when the last step ends or one fails — no other intent runs
//! on either seed in between, across a Mirage restart too (one [`crate::lock::Owner`]):
//! 1. `snapshot` on the source Ghost (BGSAVE; size, sha256, key count);
//! 2. `serve` on the source: one fetch, by the target Ghost, with a one-time token minted
//!    here, on 127.0.0.1:`transfer_port`;
//! 3. `restore` on the target: fetch Ghost → Ghost, verify sha256, start the instance on the
//!    target URI's port, verify the key count (a failure removes the target);
//! 4. `verify` on the target (the key count again, from the verified marker);
//! 5. with `source_after = "retire"`: `stop` the source instance — only after 4 succeeded.
//!
//! The source is only read until step 5; any failure before it fails the intent with the
//! source serving.

use shared::envelope::Args;

use crate::step::{fe, glob_match, FieldError, On, Step};

pub const OPERATION: &str = "storage.move";
pub const SEED: &str = "seed.redis";
pub const DEFAULT_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// `redis://<ghost>[:port]/<instance>`: the Ghost that hosts it, the instance's port (the
/// target's is where it will listen) and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedUri {
    pub ghost: String,
    pub port: Option<u16>,
    pub name: String,
}

pub fn parse_uri(field: &str, u: &str) -> Result<SeedUri, FieldError> {
    let bad = |why: &str| {
        fe(
            field,
            format!("{u:?}: {why} (expected redis://<ghost id>[:port]/<instance>, e.g. redis://ghost.2:6391/cache)"),
        )
    };
    let rest = u
        .trim()
        .strip_prefix("redis://")
        .ok_or_else(|| bad("not a redis:// URI"))?;
    let (authority, name) = rest
        .split_once('/')
        .ok_or_else(|| bad("no instance name"))?;
    let (ghost, port) = match authority.rsplit_once(':') {
        Some((g, p)) => {
            let p: u16 = p.parse().map_err(|_| bad("the port is not a number"))?;
            if p < 1024 {
                return Err(bad("the port must be 1024..=65535"));
            }
            (g, Some(p))
        }
        None => (authority, None),
    };
    shared::handshake::validate_ghost_id(ghost).map_err(|e| bad(&format!("ghost id: {e}")))?;
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'));
    if !name_ok {
        return Err(bad("the instance name must be 1..=64 of [a-z0-9_-]"));
    }
    Ok(SeedUri {
        ghost: ghost.to_owned(),
        port,
        name: name.to_owned(),
    })
}

fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Expands step `i` (a `storage.move`) of intent `intent_id`.
pub fn expand(
    i: usize,
    seed: Option<&str>,
    args: &Args,
    intent_id: &str,
    target_scope: &str,
    timeout_ms: u64,
    retries: u32,
) -> Result<Vec<Step>, FieldError> {
    expand_with(
        i,
        seed,
        args,
        intent_id,
        target_scope,
        timeout_ms,
        retries,
        token(),
    )
}

#[allow(clippy::too_many_arguments)]
pub fn expand_with(
    i: usize,
    seed: Option<&str>,
    args: &Args,
    intent_id: &str,
    target_scope: &str,
    timeout_ms: u64,
    retries: u32,
    token: String,
) -> Result<Vec<Step>, FieldError> {
    let f = |name: &str| format!("step[{i}].{name}");
    if let Some(s) = seed.map(str::trim).filter(|s| *s != SEED) {
        return Err(fe(
            f("seed"),
            format!("storage.move moves {SEED} data; seed {s:?} is not supported"),
        ));
    }
    const KNOWN: &[&str] = &[
        "source",
        "target",
        "transfer_port",
        "via",
        "source_after",
        "ttl",
    ];
    if let Some(k) = args.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(fe(
            f("args"),
            format!(
                "storage.move does not take {k:?} (accepted: {})",
                KNOWN.join(", ")
            ),
        ));
    }
    let need = |k: &str| {
        args.get(k)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| fe(f(&format!("args.{k}")), "required"))
    };
    let src = parse_uri(&f("args.source"), need("source")?)?;
    let dst = parse_uri(&f("args.target"), need("target")?)?;
    let Some(dst_port) = dst.port else {
        return Err(fe(
            f("args.target"),
            "needs the port the new instance listens on (redis://ghost.2:6391/cache)",
        ));
    };
    if src.ghost == dst.ghost {
        return Err(fe(
            f("args.target"),
            "must be on another Ghost than the source",
        ));
    }
    let scope = target_scope.strip_prefix("ghost:").unwrap_or("*");
    for (k, g) in [("source", &src.ghost), ("target", &dst.ghost)] {
        if !glob_match(scope, g) {
            return Err(fe(
                f(&format!("args.{k}")),
                format!("{g} is outside {target_scope}"),
            ));
        }
    }
    let tp = need("transfer_port")?;
    let transfer_port = tp
        .parse::<u16>()
        .ok()
        .filter(|p| *p >= 1024)
        .ok_or_else(|| fe(f("args.transfer_port"), "must be 1024..=65535"))?;
    // Where the target connects: the source's offer, or a relay in front of it (tests).
    let from = match args.get("via").map(|v| v.trim()) {
        None | Some("") => format!("127.0.0.1:{transfer_port}"),
        Some(v) => {
            if v.parse::<std::net::SocketAddr>().is_err() {
                return Err(fe(f("args.via"), "must be IP:PORT"));
            }
            v.to_owned()
        }
    };
    let retire = match args.get("source_after").map(|v| v.trim()) {
        None | Some("") | Some("keep") => false,
        Some("retire") => true,
        Some(_) => return Err(fe(f("args.source_after"), "must be keep or retire")),
    };
    let ttl = args.get("ttl").cloned().unwrap_or_else(|| "10m".into());
    let move_id = format!("{intent_id}-{i}");
    let mut locks = vec![
        crate::lock::key(&src.ghost, SEED),
        crate::lock::key(&dst.ghost, SEED),
    ];
    locks.sort();
    let step = |ghost: &str, op: &str, a: &[(&str, &str)], retries: u32| Step {
        seed: SEED.to_owned(),
        operation: op.to_owned(),
        args: a
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        on: On::Ghost(ghost.to_owned()),
        blocking: true,
        timeout_ms,
        retries,
        continue_on_error: false,
        check: None,
        offline: Default::default(),
        uri: None,
        locks: locks.clone(),
        hold_locks: true,
    };
    let (tp, dp) = (transfer_port.to_string(), dst_port.to_string());
    let mut steps = vec![
        step(
            &src.ghost,
            "snapshot",
            &[("name", &src.name), ("move", &move_id)],
            retries,
        ),
        step(
            &src.ghost,
            "serve",
            &[
                ("name", &src.name),
                ("move", &move_id),
                ("token", &token),
                ("for", &dst.ghost),
                ("port", &tp),
                ("ttl", &ttl),
            ],
            retries,
        ),
        // Never retried: a fetch spends the token, and a second restore finds the first's.
        step(
            &dst.ghost,
            "restore",
            &[
                ("name", &dst.name),
                ("port", &dp),
                ("move", &move_id),
                ("from", &from),
                ("token", &token),
                ("as", &dst.ghost),
            ],
            0,
        ),
        step(
            &dst.ghost,
            "verify",
            &[("name", &dst.name), ("move", &move_id)],
            retries,
        ),
    ];
    if retire {
        steps.push(step(&src.ghost, "stop", &[("name", &src.name)], retries));
    }
    // The last step ends the set: its end releases both locks.
    if let Some(last) = steps.last_mut() {
        last.hold_locks = false;
    }
    Ok(steps)
}

/// What the intent API shows in place of a move's one-time token.
pub const REDACTED: &str = "[redacted]";

#[cfg(test)]
mod tests {
    use super::*;

    fn a(kv: &[(&str, &str)]) -> Args {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_move_expands_into_ordered_locked_steps() {
        let args = a(&[
            ("source", "redis://ghost.local/cache"),
            ("target", "redis://ghost.2:6391/cache"),
            ("transfer_port", "7390"),
            ("source_after", "retire"),
        ]);
        let s = expand_with(0, None, &args, "mv", "ghost:*", 60_000, 1, "t".repeat(32)).unwrap();
        let ops: Vec<(String, String)> = s
            .iter()
            .map(|s| (s.on_ghost().to_owned(), s.operation.clone()))
            .collect();
        assert_eq!(
            ops,
            [
                ("ghost.local".into(), "snapshot".into()),
                ("ghost.local".into(), "serve".into()),
                ("ghost.2".into(), "restore".into()),
                ("ghost.2".into(), "verify".into()),
                ("ghost.local".into(), "stop".into()),
            ]
        );
        for st in &s {
            assert!(st.blocking);
            assert_eq!(st.locks, ["ghost.2::seed.redis", "ghost.local::seed.redis"]);
        }
        // One lock set: every step but the last hands both locks on.
        let holds: Vec<bool> = s.iter().map(|s| s.hold_locks).collect();
        assert_eq!(holds, [true, true, true, true, false]);
        assert_eq!(s[1].args["for"], "ghost.2");
        assert_eq!(s[1].args["token"], s[2].args["token"]);
        assert_eq!(s[2].args["from"], "127.0.0.1:7390");
        assert_eq!(s[2].args["port"], "6391");
        assert_eq!(s[2].retries, 0);
        assert_eq!(s[0].args["move"], "mv-0");
        // Kept by default: no stop step.
        let keep = a(&[
            ("source", "redis://ghost.local/cache"),
            ("target", "redis://ghost.2:6391/cache"),
            ("transfer_port", "7390"),
            ("via", "127.0.0.1:9999"),
        ]);
        let s = expand_with(0, None, &keep, "mv", "ghost:*", 60_000, 0, "t".repeat(32)).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[2].args["from"], "127.0.0.1:9999");
    }

    #[test]
    fn bad_moves_name_the_field() {
        let base = [
            ("source", "redis://ghost.local/cache"),
            ("target", "redis://ghost.2:6391/cache"),
            ("transfer_port", "7390"),
        ];
        let with = |k: &str, v: &str| {
            let mut m = a(&base);
            m.insert(k.into(), v.into());
            expand_with(3, None, &m, "mv", "ghost:*", 1, 0, "t".repeat(32)).unwrap_err()
        };
        assert_eq!(
            with("target", "redis://ghost.2/cache").field,
            "step[3].args.target"
        );
        assert_eq!(
            with("target", "redis://ghost.local:6391/x").field,
            "step[3].args.target"
        );
        assert_eq!(with("source", "http://x/y").field, "step[3].args.source");
        assert_eq!(
            with("source", "redis://g/Bad Name").field,
            "step[3].args.source"
        );
        assert_eq!(
            with("transfer_port", "80").field,
            "step[3].args.transfer_port"
        );
        assert_eq!(
            with("source_after", "delete").field,
            "step[3].args.source_after"
        );
        assert_eq!(with("via", "nowhere").field, "step[3].args.via");
        assert_eq!(with("colour", "x").field, "step[3].args");
        let e =
            expand_with(0, None, &a(&base), "mv", "ghost:edge-*", 1, 0, "t".into()).unwrap_err();
        assert_eq!(e.field, "step[0].args.source");
        let e = expand_with(
            0,
            Some("seed.kv"),
            &a(&base),
            "mv",
            "ghost:*",
            1,
            0,
            "t".into(),
        )
        .unwrap_err();
        assert_eq!(e.field, "step[0].seed");
    }

    #[test]
    fn the_token_never_leaves_through_the_intent_view() {
        let text = "intent_id=\"mv\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n\
            [[step]]\noperation=\"storage.move\"\nargs={source=\"redis://a/cache\",target=\"redis://b:6391/cache\",transfer_port=7390}\n\
            [[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={token=\"mine\"}\n";
        let intent = crate::intent::parse(text, || "x".into()).unwrap();
        let token = intent.steps[1].args["token"].clone();
        let mut plan = crate::plan::Plan::new(intent, 0);
        plan.step = Some(crate::plan::StepRun {
            index: 2,
            started_ms: 0,
            placement: vec!["b".into()],
            waiting_placement: None,
            locks: Default::default(),
            blocked_by: None,
            ghosts: Default::default(),
            outstanding: [(
                "c".to_owned(),
                crate::plan::Outstanding {
                    ghost: "b".into(),
                    kind: crate::plan::Kind::Main,
                    attempt: 1,
                    deadline_ms: 0,
                    command: crate::plan::CommandRecord {
                        command_id: "c".into(),
                        operation: "restore".into(),
                        args: plan_args(&[("token", &token), ("move", "mv-0")]),
                        lock_token: None,
                    },
                },
            )]
            .into(),
            dispatched: true,
            corrected: false,
            offline: vec![],
            resolved_args: Some(plan_args(&[("token", &token)])),
        });
        let mut shown = plan.clone();
        crate::plan::redact_move_token(&mut shown);
        let json = serde_json::to_string(&shown).unwrap();
        assert!(!json.contains(&token), "{json}");
        assert_eq!(shown.intent.steps[2].args["token"], REDACTED);
        assert_eq!(shown.intent.steps[2].args["move"], "mv-0");
        // Another seed's own argument named token is its business.
        assert_eq!(shown.intent.steps[4].args["token"], "mine");
        // Mirage's own copy keeps it: a resumed move re-sends the same commands.
        assert!(serde_json::to_string(&plan).unwrap().contains(&token));
    }

    fn plan_args(kv: &[(&str, &str)]) -> Args {
        a(kv)
    }

    #[test]
    fn each_submission_mints_its_own_token() {
        assert_ne!(token(), token());
        assert_eq!(token().len(), 32);
    }

    impl Step {
        fn on_ghost(&self) -> &str {
            match &self.on {
                On::Ghost(g) => g,
                _ => "?",
            }
        }
    }
}
