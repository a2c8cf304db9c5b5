//! Client for a Ghost's admin boundary (edgectl-compatible NDJSON), used for Ghosts listed
//! under `[[ghost_admin]]`: Ghosts that take no commands on their session (edgectl Ghosts).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use shared::envelope::{Command, Envelope, Event, Outcome};
use shared::handshake::{OperationInfo, SeedInfo};
use shared::wire::{decode_one, Limits};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const MAX_REPLY: usize = 16 * 1024 * 1024;

/// `req` with the Ghost's admin token added, when there is one.
fn with_token(mut req: Value, token: &str) -> Value {
    if !token.is_empty() {
        if let Some(m) = req.as_object_mut() {
            m.insert("token".into(), Value::String(token.to_owned()));
        }
    }
    req
}

/// One request, one response line, bounded in time and size.
pub async fn call(addr: &str, req: &Value, timeout: Duration) -> Result<Value, String> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut line = req.to_string();
        line.push('\n');
        s.write_all(line.as_bytes())
            .await
            .map_err(|e| format!("write {addr}: {e}"))?;
        let mut buf = BytesMut::new();
        let l = shared::handshake::read_line(&mut s, &mut buf, MAX_REPLY)
            .await
            .map_err(|e| format!("read {addr}: {e}"))?;
        let v: Value = serde_json::from_slice(&l).map_err(|e| format!("reply from {addr}: {e}"))?;
        Ok(v)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("{addr} did not answer within {timeout:?}"))?
}

fn get<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| v.get(*k))
}

/// `status` then `list_seeds`: the Ghost's id and seeds.
pub async fn probe(
    addr: &str,
    token: &str,
    timeout: Duration,
) -> Result<(String, Vec<SeedInfo>), String> {
    let st = call(
        addr,
        &with_token(json!({"action": "status"}), token),
        timeout,
    )
    .await?;
    if st["ok"] != true {
        return Err(format!("status: {}", st["error"]));
    }
    let id = get(&st["data"], &["GhostID", "ghost_id"])
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let seeds = call(
        addr,
        &with_token(json!({"action": "list_seeds"}), token),
        timeout,
    )
    .await?;
    let list = seeds["data"].as_array().cloned().unwrap_or_default();
    let seeds = list
        .iter()
        .filter_map(|s| {
            let id = get(s, &["ID", "id"])?.as_str()?.to_owned();
            let ops = get(s, &["Operations", "operations"])
                .and_then(Value::as_array)
                .map(|ops| {
                    ops.iter()
                        .filter_map(|o| {
                            Some(OperationInfo {
                                name: get(o, &["Name", "name"])?.as_str()?.to_owned(),
                                // Mirage retries a timed-out attempt only where this is true.
                                idempotent: get(o, &["Idempotent", "idempotent"])
                                    .and_then(Value::as_bool)
                                    .unwrap_or(false),
                                ..Default::default()
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(SeedInfo {
                name: get(s, &["Name", "name"])
                    .and_then(Value::as_str)
                    .unwrap_or(&id)
                    .to_owned(),
                description: get(s, &["Description", "description"])
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                id,
                operations: ops,
            })
        })
        .collect();
    Ok((id, seeds))
}

/// Runs a command through `execute_envelope`; the Ghost answers with the event frame.
pub async fn execute(
    addr: &str,
    token: &str,
    message_id: u64,
    mut cmd: Command,
    timeout: Duration,
) -> Result<Event, String> {
    let cmd_id = cmd.command_id.clone();
    // As on the session: the time left, on our clock (ext 207), for a Ghost whose clock differs.
    cmd.attach_budget(shared::now_ms());
    let frame = Envelope::Command(cmd)
        .to_frame(message_id)
        .and_then(|f| f.to_bytes())
        .map_err(|e| format!("encode command: {e}"))?;
    let r = call(
        addr,
        &with_token(
            json!({"action": "execute_envelope", "command_frame": B64.encode(&frame)}),
            token,
        ),
        timeout,
    )
    .await?;
    if r["ok"] != true {
        let why = r["error"]
            .as_str()
            .unwrap_or("execute_envelope failed")
            .to_owned();
        // An edgectl Ghost answers a command_id it has already run (a re-send after a
        // Mirage restart or a lost reply) with this refusal; the outcome is on record there.
        if why.contains("duplicate command_id") {
            if let Some(e) = execution(addr, &cmd_id, timeout).await? {
                return Ok(e);
            }
        }
        return Err(why);
    }
    let b64 = get(&r["data"], &["event_frame", "EventFrame"])
        .and_then(Value::as_str)
        .ok_or("reply has no event_frame")?;
    let bytes = B64.decode(b64).map_err(|e| format!("event_frame: {e}"))?;
    let f = decode_one(&bytes, &Limits::default()).map_err(|e| format!("event_frame: {e}"))?;
    let mut e = match Envelope::from_frame(&f).map_err(|e| format!("event_frame: {e}"))? {
        Envelope::Event(e) => e,
        other => {
            return Err(format!(
                "event_frame holds a {} envelope",
                other.message_type()
            ))
        }
    };
    // edgectl's event frame carries no seed result, so a failure would read only "seed
    // reported an error"; its execution record has the seed's stderr and exit code.
    if e.outcome == Outcome::Error && e.stderr.is_none() && e.error_reason.is_none() {
        if let Ok(Some(rec)) = execution(addr, &e.command_id, timeout).await {
            e.stderr = rec.stderr;
            e.exit_code = e.exit_code.or(rec.exit_code);
            e.status = e.status.or(rec.status);
        }
    }
    Ok(e)
}

/// `execution_by_command_id`: the Ghost's record of a command it ran, as an event (with the
/// seed's result), or None when it has no record or no outcome yet.
pub async fn execution(
    addr: &str,
    command_id: &str,
    timeout: Duration,
) -> Result<Option<Event>, String> {
    let r = call(
        addr,
        &json!({"action": "execution_by_command_id", "command_id": command_id}),
        timeout,
    )
    .await?;
    if r["ok"] != true {
        return Err(r["error"]
            .as_str()
            .unwrap_or("execution_by_command_id failed")
            .to_owned());
    }
    Ok(execution_event(&r["data"], command_id))
}

/// Reads edgectl's `{"found", "execution": ExecutionState}` (Go field names; snake_case too).
pub fn execution_event(data: &Value, command_id: &str) -> Option<Event> {
    if get(data, &["found", "Found"]) != Some(&Value::Bool(true)) {
        return None;
    }
    let x = get(data, &["execution", "Execution"])?;
    let s = |v: &Value, keys: &[&str]| {
        get(v, keys)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let ev = get(x, &["Event", "event"]).cloned().unwrap_or(Value::Null);
    let result = get(x, &["SeedResult", "seed_result"])
        .cloned()
        .unwrap_or(Value::Null);
    let outcome_text = [
        s(&ev, &["Outcome", "outcome"]),
        s(x, &["Outcome", "outcome"]),
    ]
    .into_iter()
    .find(|o| !o.is_empty())?;
    let outcome = Outcome::parse(outcome_text.trim()).ok()?;
    let recorded = s(&ev, &["CommandID", "command_id"]);
    if !recorded.is_empty() && recorded != command_id {
        return None; // not the command asked about
    }
    let pick = |a: String, b: String| if a.is_empty() { b } else { a };
    let mut e = Event::new(
        pick(
            s(&ev, &["EventID", "event_id"]),
            format!("evt.{command_id}"),
        ),
        command_id,
        pick(
            s(&ev, &["IntentID", "intent_id"]),
            s(x, &["IntentID", "intent_id"]),
        ),
        pick(
            s(&ev, &["GhostID", "ghost_id"]),
            s(x, &["GhostID", "ghost_id"]),
        ),
        pick(
            s(&ev, &["SeedID", "seed_id"]),
            s(x, &["SeedSelector", "seed_selector"]),
        ),
        outcome,
    );
    e.timestamp_ms = get(&ev, &["TimestampMS", "timestamp_ms"]).and_then(Value::as_u64);
    let bytes = |keys: &[&str]| {
        get(&result, keys)
            .and_then(Value::as_str)
            .and_then(|b| B64.decode(b).ok())
            .filter(|b| !b.is_empty())
            .map(Bytes::from)
    };
    e.stdout = bytes(&["Stdout", "stdout"]);
    e.stderr = bytes(&["Stderr", "stderr"]);
    e.exit_code = get(&result, &["ExitCode", "exit_code"])
        .and_then(Value::as_u64)
        .and_then(|c| u32::try_from(c).ok());
    let status = s(&result, &["Status", "status"]);
    e.status = (!status.is_empty()).then_some(status);
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape edgectl's `execution_by_command_id` answers (internal/ghost/execution.go).
    fn go_record(outcome: &str, stderr: &str, exit: u32) -> Value {
        json!({"found": true, "execution": {
            "CommandID": "cmd.1", "IntentID": "i.1", "GhostID": "edge", "SeedSelector": "seed.kv",
            "SeedResult": {"ExecutionID": "x", "SeedID": "seed.kv", "Status": "error",
                "Stdout": "", "Stderr": B64.encode(stderr), "ExitCode": exit},
            "Event": {"EventID": "evt.9", "CommandID": "cmd.1", "IntentID": "i.1",
                "GhostID": "edge", "SeedID": "seed.kv", "Outcome": outcome, "TimestampMS": 7},
            "Outcome": outcome, "Phase": "complete"}})
    }

    #[test]
    fn reads_an_edgectl_execution_record_with_its_seed_result() {
        let e = execution_event(&go_record("error", "missing key=k\n", 1), "cmd.1").unwrap();
        assert_eq!(e.outcome, Outcome::Error);
        assert_eq!(e.event_id, "evt.9");
        assert_eq!(e.intent_id, "i.1");
        assert_eq!(e.stderr.as_deref(), Some(&b"missing key=k\n"[..]));
        assert_eq!(e.exit_code, Some(1));
        assert_eq!(e.timestamp_ms, Some(7));
    }

    #[test]
    fn an_absent_or_foreign_record_is_not_an_outcome() {
        assert!(execution_event(&json!({"found": false, "execution": {}}), "cmd.1").is_none());
        assert!(execution_event(&go_record("error", "", 1), "cmd.2").is_none());
        assert!(execution_event(&go_record("", "", 0), "cmd.1").is_none());
        assert!(execution_event(&json!({"found": true}), "cmd.1").is_none());
        assert!(execution_event(&go_record("bogus", "", 0), "cmd.1").is_none());
    }
}
