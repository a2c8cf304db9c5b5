//! The intent schema users submit (TOML or JSON, one schema): who, what scope, what objective,
//! and an ordered plan of steps. Pure parsing and validation; errors name the field.

use std::collections::BTreeMap;

use serde::Deserialize;
use shared::envelope::Args;
use shared::handshake::validate_seed_id;

pub(crate) use crate::step::fe;
pub use crate::step::{
    glob_match, parse_duration_ms, Check, FieldError, Intent, Offline, On, Step,
    DEFAULT_TIMEOUT_MS, MAX_STEPS, MAX_TIMEOUT_MS,
};

/// What users write. Durations are `"30s"`, `"500ms"`, `"2m"`, `"1h"` or milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntent {
    #[serde(default)]
    intent_id: Option<String>,
    actor: Option<String>,
    target_scope: Option<String>,
    objective: Option<String>,
    #[serde(default)]
    keep: Option<Duration>,
    /// The default of every step's `offline`.
    #[serde(default)]
    offline: Option<String>,
    #[serde(default, alias = "steps")]
    step: Vec<RawStep>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    seed: Option<String>,
    operation: Option<String>,
    #[serde(default)]
    args: BTreeMap<String, ArgValue>,
    #[serde(default)]
    on: Option<String>,
    #[serde(default)]
    blocking: bool,
    #[serde(default)]
    timeout: Option<Duration>,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    continue_on_error: bool,
    #[serde(default)]
    check: Option<RawCheck>,
    #[serde(default)]
    offline: Option<String>,
    #[serde(default)]
    uri: Option<String>,
}

/// A seed URI a step may target: `scheme://rest`, printable, bounded.
fn seed_uri(field: &str, v: Option<&str>) -> Result<Option<String>, FieldError> {
    let Some(u) = v.map(str::trim) else {
        return Ok(None);
    };
    let ok_scheme = u.split_once("://").is_some_and(|(scheme, rest)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            && !rest.is_empty()
    });
    if !ok_scheme || u.len() > 512 || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(fe(
            field,
            "must be a seed URI such as redis://127.0.0.1:6390/0 (scheme://…, at most 512 bytes, no spaces)",
        ));
    }
    Ok(Some(u.to_owned()))
}

fn offline(field: &str, v: Option<&str>, default: Offline) -> Result<Offline, FieldError> {
    match v.map(str::trim) {
        None => Ok(default),
        Some("skip") => Ok(Offline::Skip),
        Some("fail") => Ok(Offline::Fail),
        Some("catch_up") => Ok(Offline::CatchUp),
        Some(_) => Err(fe(field, "must be skip, fail or catch_up")),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    operation: Option<String>,
    #[serde(default)]
    args: BTreeMap<String, ArgValue>,
    #[serde(default)]
    expect: Option<ArgValue>,
    #[serde(default)]
    observed: BTreeMap<String, ArgValue>,
}

/// Args are strings on the wire; numbers and booleans are accepted and written as text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ArgValue {
    S(String),
    I(i64),
    F(f64),
    B(bool),
}

impl ArgValue {
    fn text(&self) -> String {
        match self {
            ArgValue::S(s) => s.clone(),
            ArgValue::I(i) => i.to_string(),
            ArgValue::F(f) => f.to_string(),
            ArgValue::B(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Duration {
    Ms(u64),
    Text(String),
}

fn duration(field: &str, d: &Option<Duration>, default: u64) -> Result<u64, FieldError> {
    let ms = match d {
        None => default,
        Some(Duration::Ms(ms)) => *ms,
        Some(Duration::Text(t)) => parse_duration_ms(t).ok_or_else(|| {
            fe(
                field,
                format!("{t:?} is not a duration (use 500ms, 30s, 2m, 1h)"),
            )
        })?,
    };
    if ms == 0 || ms > MAX_TIMEOUT_MS {
        return Err(fe(
            field,
            format!("must be between 1ms and 24h, got {ms}ms"),
        ));
    }
    Ok(ms)
}

fn required(field: &str, v: &Option<String>) -> Result<String, FieldError> {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s.to_owned()),
        _ => Err(fe(field, "required and must not be blank")),
    }
}

fn args(field: &str, a: &BTreeMap<String, ArgValue>) -> Result<Args, FieldError> {
    let mut out = Args::new();
    for (k, v) in a {
        if k.trim().is_empty() {
            return Err(fe(field, "argument names must not be blank"));
        }
        out.insert(k.clone(), v.text());
    }
    Ok(out)
}

/// Ids are used in command ids, lock keys and URLs: keep them plain.
pub fn validate_intent_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1..=128 characters".into());
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("may contain only letters, digits, '.', '_' and '-'".into());
    }
    Ok(())
}

fn validate(raw: RawIntent, new_id: impl FnOnce() -> String) -> Result<Intent, FieldError> {
    let intent_id = match raw.intent_id.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => new_id(),
    };
    validate_intent_id(&intent_id).map_err(|r| fe("intent_id", r))?;
    let actor = required("actor", &raw.actor)?;
    let target_scope = required("target_scope", &raw.target_scope)?;
    let Some(glob) = target_scope.strip_prefix("ghost:") else {
        return Err(fe(
            "target_scope",
            "must be ghost:<glob>, e.g. ghost:* or ghost:edge-*",
        ));
    };
    if glob.trim().is_empty() {
        return Err(fe("target_scope", "the glob after ghost: is empty"));
    }
    let objective = required("objective", &raw.objective)?;
    let keep_ms = match &raw.keep {
        None => None,
        Some(_) => {
            let ms = duration("keep", &raw.keep, 0)?;
            if ms < 1000 {
                return Err(fe("keep", "must be at least 1s"));
            }
            Some(ms)
        }
    };
    if raw.step.is_empty() {
        return Err(fe("step", "an intent needs at least one [[step]]"));
    }
    if raw.step.len() > MAX_STEPS {
        return Err(fe("step", format!("at most {MAX_STEPS} steps")));
    }
    let default_offline = offline("offline", raw.offline.as_deref(), Offline::Skip)?;
    let mut steps = Vec::with_capacity(raw.step.len());
    for (i, s) in raw.step.iter().enumerate() {
        let f = |name: &str| format!("step[{i}].{name}");
        if s.operation.as_deref().map(str::trim) == Some(crate::storage_move::OPERATION) {
            let timeout_ms = duration(
                &f("timeout"),
                &s.timeout,
                crate::storage_move::DEFAULT_TIMEOUT_MS,
            )?;
            let expanded = crate::storage_move::expand(
                i,
                s.seed.as_deref(),
                &args(&f("args"), &s.args)?,
                &intent_id,
                &target_scope,
                timeout_ms,
                s.retries,
            )?;
            steps.extend(expanded);
            if steps.len() > MAX_STEPS {
                return Err(fe(
                    "step",
                    format!("at most {MAX_STEPS} steps (after expansion)"),
                ));
            }
            continue;
        }
        if s.operation.as_deref().map(str::trim) == Some(crate::raft_keep::OPERATION) {
            let timeout_ms = duration(
                &f("timeout"),
                &s.timeout,
                crate::raft_keep::DEFAULT_TIMEOUT_MS,
            )?;
            steps.extend(crate::raft_keep::expand(
                i,
                s.seed.as_deref(),
                &args(&f("args"), &s.args)?,
                timeout_ms,
                s.retries.min(100),
            )?);
            if steps.len() > MAX_STEPS {
                return Err(fe(
                    "step",
                    format!("at most {MAX_STEPS} steps (after expansion)"),
                ));
            }
            continue;
        }
        let seed = required(&f("seed"), &s.seed)?;
        validate_seed_id(&seed).map_err(|r| fe(f("seed"), r))?;
        let operation = required(&f("operation"), &s.operation)?;
        let on = match s.on.as_deref().map(str::trim) {
            None | Some("all") | Some("") => On::All,
            Some("one") => On::One,
            Some("local") => On::Local,
            Some(g) => {
                shared::handshake::validate_ghost_id(g).map_err(|e| fe(f("on"), e.to_string()))?;
                On::Ghost(g.to_owned())
            }
        };
        if s.retries > 100 {
            return Err(fe(f("retries"), "at most 100"));
        }
        let check = match &s.check {
            None => None,
            Some(c) => {
                let expect = c.expect.as_ref().map(ArgValue::text);
                // Mirage keeps the first 4 KiB of a check's output: more cannot be compared.
                if expect.as_ref().is_some_and(|e| e.len() > 4096) {
                    return Err(fe(f("check.expect"), "at most 4096 bytes"));
                }
                if c.observed.is_empty() {
                    Some(Check {
                        operation: required(&f("check.operation"), &c.operation)?,
                        args: args(&f("check.args"), &c.args)?,
                        expect,
                        observed: BTreeMap::new(),
                        raft_keep: None,
                    })
                } else {
                    if c.operation.is_some() || !c.args.is_empty() || expect.is_some() {
                        return Err(fe(
                            f("check.observed"),
                            "an observed check sends no command: give observed, or operation/args/expect, not both",
                        ));
                    }
                    if c.observed.len() > 32 {
                        return Err(fe(f("check.observed"), "at most 32 keys"));
                    }
                    let observed = args(&f("check.observed"), &c.observed)?;
                    Some(Check {
                        operation: String::new(),
                        args: Args::new(),
                        expect: None,
                        observed,
                        raft_keep: None,
                    })
                }
            }
        };
        steps.push(Step {
            seed,
            operation,
            args: args(&f("args"), &s.args)?,
            on,
            blocking: s.blocking,
            timeout_ms: duration(&f("timeout"), &s.timeout, DEFAULT_TIMEOUT_MS)?,
            retries: s.retries,
            continue_on_error: s.continue_on_error,
            check,
            offline: offline(&f("offline"), s.offline.as_deref(), default_offline)?,
            uri: seed_uri(&f("uri"), s.uri.as_deref())?,
            locks: Vec::new(),
            hold_locks: false,
        });
    }
    if keep_ms.is_some() && steps.iter().all(|s| s.check.is_none()) {
        return Err(fe(
            "keep",
            "a standing intent needs at least one step with a check",
        ));
    }
    Ok(Intent {
        intent_id,
        actor,
        target_scope,
        objective,
        keep_ms,
        steps,
    })
}

/// Parses a plan file: JSON when it starts with `{`, TOML otherwise.
pub fn parse(text: &str, new_id: impl FnOnce() -> String) -> Result<Intent, FieldError> {
    let raw: RawIntent = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| fe("body", format!("invalid JSON: {e}")))?
    } else {
        toml::from_str(text).map_err(|e| fe("body", format!("invalid TOML: {}", e.message())))?
    };
    validate(raw, new_id)
}

pub fn parse_json_value(
    v: serde_json::Value,
    new_id: impl FnOnce() -> String,
) -> Result<Intent, FieldError> {
    let raw: RawIntent =
        serde_json::from_value(v).map_err(|e| fe("body", format!("invalid intent: {e}")))?;
    validate(raw, new_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> String {
        "generated".into()
    }

    #[test]
    fn toml_and_json_are_one_schema() {
        let t = r#"
            actor = "ops"
            target_scope = "ghost:*"
            objective = "hello"
            [[step]]
            seed = "seed.kv"
            operation = "put"
            args = { key = "k", value = 3 }
            blocking = true
            timeout = "5s"
            retries = 2
            [[step]]
            seed = "seed.flow"
            operation = "status"
            on = "one"
        "#;
        let a = parse(t, id).unwrap();
        assert_eq!(a.intent_id, "generated");
        assert_eq!(a.steps[0].args["value"], "3");
        assert_eq!(a.steps[0].timeout_ms, 5000);
        assert_eq!(a.steps[1].on, On::One);
        let l = parse(
            "actor=\"a\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"status\"\non=\"local\"\n",
            id,
        )
        .unwrap();
        assert_eq!(l.steps[0].on, On::Local);
        let j = r#"{"actor":"ops","target_scope":"ghost:*","objective":"hello","intent_id":"i-1",
            "steps":[{"seed":"seed.kv","operation":"put","args":{"key":"k","value":"3"},
            "blocking":true,"timeout":5000,"retries":2},{"seed":"seed.flow","operation":"status","on":"one"}]}"#;
        let b = parse(j, id).unwrap();
        assert_eq!(b.steps, a.steps);
        assert_eq!(b.intent_id, "i-1");
    }

    #[test]
    fn errors_name_the_field() {
        let base = "actor=\"a\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n";
        let e = parse(
            &format!("{base}[[step]]\nseed=\"Bad Seed\"\noperation=\"x\"\n"),
            id,
        )
        .unwrap_err();
        assert_eq!(e.field, "step[0].seed");
        let e = parse(&format!("{base}[[step]]\nseed=\"seed.kv\"\n"), id).unwrap_err();
        assert_eq!(e.field, "step[0].operation");
        let e = parse(base, id).unwrap_err();
        assert_eq!(e.field, "step");
        let e = parse("actor=\"a\"\ntarget_scope=\"edge\"\nobjective=\"o\"\n", id).unwrap_err();
        assert_eq!(e.field, "target_scope");
        let e = parse(
            &format!("{base}[[step]]\nseed=\"seed.kv\"\noperation=\"x\"\ntimeout=\"soon\"\n"),
            id,
        )
        .unwrap_err();
        assert_eq!(e.field, "step[0].timeout");
        let e = parse(&format!("{base}colour=1\n"), id).unwrap_err();
        assert_eq!(e.field, "body");
        let e = parse(
            &format!("intent_id=\"a b\"\n{base}[[step]]\nseed=\"seed.kv\"\noperation=\"x\"\n"),
            id,
        )
        .unwrap_err();
        assert_eq!(e.field, "intent_id");
        let e = parse(
            &format!("keep=\"10s\"\n{base}[[step]]\nseed=\"seed.kv\"\noperation=\"x\"\n"),
            id,
        )
        .unwrap_err();
        assert_eq!(e.field, "keep");
    }

    #[test]
    fn a_step_uri_is_checked() {
        let step = |u: &str| {
            parse(
                &format!("actor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.redis\"\noperation=\"health\"\nuri=\"{u}\"\n"),
                || "x".into(),
            )
        };
        let i = step("redis://127.0.0.1:6390/0").unwrap();
        assert_eq!(i.steps[0].uri.as_deref(), Some("redis://127.0.0.1:6390/0"));
        for bad in [
            "127.0.0.1:6390",
            "://x",
            "redis://",
            "re dis://x",
            "redis://a b",
        ] {
            let e = step(bad).unwrap_err();
            assert_eq!(e.field, "step[0].uri", "{bad}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "ghost.a"));
        assert!(glob_match("edge-*", "edge-12"));
        assert!(!glob_match("edge-*", "core-1"));
        assert!(glob_match("g?.*", "g1.x"));
        assert!(glob_match("*.kv.*", "a.kv.b"));
        assert!(!glob_match("a", "ab"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("2m"), Some(120_000));
        assert_eq!(parse_duration_ms("7"), Some(7));
        assert_eq!(parse_duration_ms("x"), None);
    }
}

#[cfg(test)]
mod example_plans {
    /// Every example in config/plans parses.
    #[test]
    fn examples_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/plans");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            super::parse(&text, || "x".into()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
        assert!(n >= 4);
    }
}
