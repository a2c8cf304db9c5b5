//! Client for a Ghost's admin boundary (edgectl-compatible NDJSON), used for Ghosts listed
//! under `[[ghost_admin]]`: Ghosts that take no commands on their session (edgectl Ghosts).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::BytesMut;
use serde_json::{json, Value};
use shared::envelope::{Command, Envelope, Event};
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
    cmd: Command,
    timeout: Duration,
) -> Result<Event, String> {
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
        return Err(r["error"]
            .as_str()
            .unwrap_or("execute_envelope failed")
            .to_owned());
    }
    let b64 = get(&r["data"], &["event_frame", "EventFrame"])
        .and_then(Value::as_str)
        .ok_or("reply has no event_frame")?;
    let bytes = B64.decode(b64).map_err(|e| format!("event_frame: {e}"))?;
    let f = decode_one(&bytes, &Limits::default()).map_err(|e| format!("event_frame: {e}"))?;
    match Envelope::from_frame(&f).map_err(|e| format!("event_frame: {e}"))? {
        Envelope::Event(e) => Ok(e),
        other => Err(format!(
            "event_frame holds a {} envelope",
            other.message_type()
        )),
    }
}
