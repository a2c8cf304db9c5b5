//! Issue 21: interop with the Go peer (edgectl). Each test puts a real `mirage` or `ghost`
//! binary opposite a peer scripted to what edgectl does (reference/edgectl-behaviour.md,
//! lines and frames from ../shared/vectors); no edgectl binary is available on this machine.
//!
//! - an edgectl Ghost: registers with the captured `seed.register` line (no capabilities),
//!   sends heartbeat probes (§2.5), reads exactly one frame per event and decodes it as an
//!   `event.ack` (fields 4, 2, 200, 700, 6; §1.9) — anything else is an error to it;
//! - an edgectl Mirage: accepts a registration, acks every event on the session and counts
//!   them by command_id (§2.8, §3.6), and drives the Ghost's admin boundary with Go-shaped
//!   requests (`execute_envelope` with message_id 1, untagged `spawn` keys; §4.3, §3.10).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use e2e::{tail, Ghost, Mirage, TempDir};
use serde_json::{json, Value};
use shared::envelope::{Command, Envelope, Event, Outcome};
use shared::wire::tlv::{self, id, Field, Fields};
use shared::wire::{decode_one, Frame, Limits};

const T: Duration = Duration::from_secs(30);

/// The Ghosts here have an admin token of their own and every request carries it (a spawned
/// child is asked with it too), whatever token rules the harness applies.
const TOKEN: &str = "interop-admin-token";

fn ghost(dir: &TempDir, id: &str, mirage: &str) -> Ghost {
    Ghost::start_with_admin(
        dir.path(""),
        id,
        mirage,
        "",
        &format!("token = \"{TOKEN}\""),
    )
}

fn admin(g: &Ghost, mut req: Value) -> Value {
    req["token"] = json!(TOKEN);
    g.admin(req)
}

fn vector(name: &str) -> Value {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors"))
        .join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<Frame> {
    let mut head = [0u8; 32];
    s.read_exact(&mut head)?;
    let header_len = u16::from_be_bytes([head[6], head[7]]) as usize;
    let payload_len = u64::from_be_bytes(head[24..32].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; header_len.saturating_sub(32) + payload_len];
    s.read_exact(&mut rest)?;
    let mut all = head.to_vec();
    all.extend_from_slice(&rest);
    decode_one(&all, &Limits::default())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

fn write_frame(s: &mut TcpStream, f: &Frame) {
    s.write_all(&f.to_bytes().unwrap()).unwrap();
}

/// edgectl's `DecodeEventAckFrame` (§1.9): schema 4:string, 2:string, 200:string,
/// 700:string, 6:u64, then ack_code 701 if present (4 bytes). Header type and flags are not
/// checked by it; they are asserted separately where they matter.
struct GoAck {
    event_id: String,
    command_id: String,
    ghost_id: String,
    ack_status: String,
    ack_code: u32,
    timestamp_ms: u64,
}

fn go_decode_ack(f: &Frame) -> Result<GoAck, String> {
    let fields = tlv::decode(&f.payload).map_err(|e| e.to_string())?;
    let s = |fid: u16| -> Result<String, String> {
        let x = fields
            .get(fid)
            .ok_or(format!("missing required field {fid}"))?;
        if x.ty != tlv::ty::STRING {
            return Err(format!("field {fid}: type mismatch"));
        }
        Ok(String::from_utf8_lossy(&x.value).into_owned())
    };
    let ts = fields
        .get(id::TIMESTAMP_MS)
        .ok_or("missing required field 6")?;
    if ts.ty != tlv::ty::U64 {
        return Err("field 6: type mismatch".into());
    }
    let ack_code = match fields.get(id::ACK_CODE) {
        Some(c) if c.value.len() == 4 => u32::from_be_bytes(c.value[..4].try_into().unwrap()),
        Some(_) => return Err("ack_code: not 4 bytes".into()),
        None => 0,
    };
    Ok(GoAck {
        event_id: s(id::EVENT_ID)?,
        command_id: s(id::COMMAND_ID)?,
        ghost_id: s(id::GHOST_ID)?,
        ack_status: s(id::ACK_STATUS)?,
        ack_code,
        timestamp_ms: u64::from_be_bytes(
            ts.value[..8.min(ts.value.len())]
                .try_into()
                .unwrap_or([0; 8]),
        ),
    })
}

/// A session as an edgectl Ghost opens it: the captured `seed.register` line of
/// `ghost.remote`, one ack line, then frames.
struct GoGhost {
    s: TcpStream,
    id: String,
    seq: u64,
    next_msg: u64,
}

impl GoGhost {
    fn connect_line(mirage: &str, line: &str) -> (TcpStream, Value) {
        let mut s = TcpStream::connect(mirage).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(line.as_bytes()).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut ack = String::new();
        r.read_line(&mut ack).unwrap();
        assert!(r.buffer().is_empty(), "nothing after the ack line yet");
        (s, serde_json::from_str(&ack).unwrap())
    }

    fn connect(mirage: &str) -> GoGhost {
        let line = vector("ndjson.seed_register")["line"]
            .as_str()
            .unwrap()
            .to_owned();
        let (s, ack) = GoGhost::connect_line(mirage, &line);
        assert_eq!(ack["registration_ack"]["status"], "accepted", "{ack}");
        GoGhost {
            s,
            id: "ghost.remote".into(),
            seq: 0,
            // edgectl seeds its message-id counter with UnixNano at registration.
            next_msg: 1_700_000_000_000_000_000,
        }
    }

    fn send(&mut self, payload: Fields) -> u64 {
        self.next_msg += 1;
        let f = Frame::new(self.next_msg, 5, 0, payload.to_bytes().unwrap());
        write_frame(&mut self.s, &f);
        self.next_msg
    }

    /// One heartbeat probe exactly as edgectl builds it (§2.5), and the one frame it reads.
    fn heartbeat(&mut self) -> (u64, Frame) {
        self.seq += 1;
        let n = self.seq;
        let mut e = Event::new(
            format!("evt.session.{}.{n}", self.id),
            format!("cmd.session.heartbeat.{n}"),
            "intent.session.heartbeat",
            self.id.clone(),
            "seed.session",
            Outcome::Success,
        );
        e.timestamp_ms = Some(shared::now_ms());
        let mid = self.send(Envelope::Event(e).to_fields());
        (mid, read_frame(&mut self.s).unwrap())
    }
}

fn ghost_row(m: &Mirage, id: &str) -> Value {
    let (st, v) = m.get(&format!("/v1/ghosts/{id}"));
    assert_eq!(st, 200, "{v}");
    v
}

/// Item 3: an event our Mirage refuses is answered with a rejected `event.ack` an edgectl
/// Ghost can decode (before: an `error` frame, type 7, which it cannot), and the session
/// stays up; a Ghost of ours (`session.command`) still gets the `error` frame.
#[test]
fn a_refused_event_gets_a_rejected_ack_an_edgectl_ghost_decodes() {
    let dir = TempDir::new("interop-refuse");
    let m = Mirage::start(dir.path(""), 0, "");
    let mut g = GoGhost::connect(&m.session);

    // edgectl does not restrict `outcome` at the wire layer (§1.9); we accept only
    // success | error, so this event is refused (semantic, code 1300).
    let mut p = Fields::new();
    for (fid, v) in [
        (id::EVENT_ID, "evt.cmd.intent.lab.1.1"),
        (id::COMMAND_ID, "cmd.intent.lab.1.1"),
        (id::INTENT_ID, "intent.lab.1"),
        (id::GHOST_ID, "ghost.remote"),
        (id::SEED_ID, "seed.flow"),
        (id::OUTCOME, "skipped"),
    ] {
        p.push(Field::string(fid, v));
    }
    p.push(Field::u64(id::TIMESTAMP_MS, shared::now_ms()));
    let mid = g.send(p);
    let f = read_frame(&mut g.s).unwrap();
    assert_eq!(
        f.message_type, 8,
        "an event.ack, not an error frame (type 7)"
    );
    assert_eq!(f.message_id, mid, "echoes the event's message_id");
    assert_eq!(f.flags & 0x02, 0x02, "is_response");
    let a = go_decode_ack(&f).unwrap();
    assert_eq!(a.event_id, "evt.cmd.intent.lab.1.1");
    assert_eq!(a.command_id, "cmd.intent.lab.1.1");
    assert_eq!(a.ghost_id, "ghost.remote");
    assert_eq!(a.ack_status, "rejected");
    assert_eq!(a.ack_code, 1300);
    assert!(a.timestamp_ms > 0);
    // Field order and types as edgectl's own ack (vector frame.event_ack), reason last (ext).
    let want: Vec<(u16, u8)> = vector("frame.event_ack")["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["id"].as_u64().unwrap() as u16,
                x["type"].as_u64().unwrap() as u8,
            )
        })
        .collect();
    let got: Vec<(u16, u8)> = tlv::decode(&f.payload)
        .unwrap()
        .iter()
        .map(|x| (x.id, x.ty))
        .collect();
    assert_eq!(got[..want.len()], want[..]);
    let reason = tlv::decode(&f.payload)
        .unwrap()
        .get(id::ERROR_REASON)
        .map(|x| String::from_utf8_lossy(&x.value).into_owned())
        .unwrap_or_default();
    assert!(reason.contains("skipped"), "{reason}");

    // Nothing else was sent for it, and the session still works: the next heartbeat is
    // answered by its accepted ack.
    let (hb, f) = g.heartbeat();
    assert_eq!((f.message_type, f.message_id), (8, hb));
    assert_eq!(go_decode_ack(&f).unwrap().ack_status, "accepted");

    // A Ghost of ours declares session.command and decodes error frames: it still gets one.
    let reg = e2e::fake_ghost::registration("ours", &["seed.flow"]);
    let mut s = TcpStream::connect(&m.session).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(&shared::handshake::registration_line(&reg).unwrap())
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("accepted"), "{line}");
    let mut p = Fields::new();
    for (fid, v) in [
        (id::EVENT_ID, "evt.x"),
        (id::COMMAND_ID, "cmd.x"),
        (id::INTENT_ID, "intent.x"),
        (id::GHOST_ID, "ours"),
        (id::SEED_ID, "seed.flow"),
        (id::OUTCOME, "skipped"),
    ] {
        p.push(Field::string(fid, v));
    }
    write_frame(&mut s, &Frame::new(9, 5, 0, p.to_bytes().unwrap()));
    let f = read_frame(&mut s).unwrap();
    assert_eq!(f.message_type, 7, "error frame for a Ghost of ours");
}

/// Item 5: an edgectl Ghost's heartbeats show in `/v1/ghosts` (before: `events: 0,
/// last_event_ms: 0` after minutes of acked heartbeats).
#[test]
fn an_edgectl_ghosts_heartbeats_show_in_the_ghost_row() {
    let dir = TempDir::new("interop-heartbeats");
    let m = Mirage::start(dir.path(""), 0, "");
    let mut g = GoGhost::connect(&m.session);
    let start = shared::now_ms();
    for _ in 0..5 {
        let (mid, f) = g.heartbeat();
        assert_eq!((f.message_type, f.message_id), (8, mid));
        assert_eq!(go_decode_ack(&f).unwrap().ack_status, "accepted");
    }
    let deadline = Instant::now() + T;
    let row = loop {
        let row = ghost_row(&m, "ghost.remote");
        if row["heartbeats"] == 5 {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "heartbeats not counted: {row}\n{}",
            tail(&m.proc.log_text(), 20)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let last_hb = row["last_heartbeat_ms"].as_u64().unwrap();
    assert!(last_hb >= start, "{row}");
    assert_eq!(row["last_seen_ms"].as_u64().unwrap(), last_hb, "{row}");
    // `events` stays what it was: observations (command results), of which there are none.
    assert_eq!(row["events"], 0, "{row}");

    // Counted across sessions too (edgectl re-dials after a lost session).
    drop(g);
    let mut g = GoGhost::connect(&m.session);
    g.heartbeat();
    let deadline = Instant::now() + T;
    while ghost_row(&m, "ghost.remote")["heartbeats"] != 6 {
        assert!(
            Instant::now() < deadline,
            "{}",
            ghost_row(&m, "ghost.remote")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Item 6: a ghost_id with whitespace (edgectl accepts it) is refused, and the ack says why.
#[test]
fn a_ghost_id_with_whitespace_is_refused_and_the_ack_says_why() {
    let dir = TempDir::new("interop-whitespace");
    let m = Mirage::start(dir.path(""), 0, "");
    let line = vector("ndjson.seed_register")["line"]
        .as_str()
        .unwrap()
        .replace("ghost.remote", "edge 1");
    let (mut s, ack) = GoGhost::connect_line(&m.session, &line);
    let a = &ack["registration_ack"];
    assert_eq!(a["status"], "rejected", "{ack}");
    assert_eq!(a["code"], 1300, "{ack}");
    let msg = a["message"].as_str().unwrap();
    for want in ["\"edge 1\"", "whitespace", "edgectl accepts", "refuses"] {
        assert!(msg.contains(want), "{want:?} not in {msg:?}");
    }
    // ... and closed, as every rejection.
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap_or(0), 0);
}

/// What an edgectl Mirage does with a Ghost's session: accept the registration, ack every
/// event, count events by command_id (its `ObserveEvent` matches plans by command_id).
struct GoMirage {
    addr: String,
    seen: Arc<Mutex<HashMap<String, usize>>>,
    heartbeats: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
}

impl GoMirage {
    fn start() -> GoMirage {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen: Arc<Mutex<HashMap<String, usize>>> = Default::default();
        let heartbeats: Arc<Mutex<u64>> = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, hb2, stop2) = (seen.clone(), heartbeats.clone(), stop.clone());
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let (seen, hb, stop) = (seen2.clone(), hb2.clone(), stop2.clone());
                std::thread::spawn(move || serve_session(s, &seen, &hb, &stop));
            }
        });
        GoMirage {
            addr,
            seen,
            heartbeats,
            stop,
        }
    }
}

impl Drop for GoMirage {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve_session(
    s: TcpStream,
    seen: &Mutex<HashMap<String, usize>>,
    hb: &Mutex<u64>,
    stop: &AtomicBool,
) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let reg: Value = serde_json::from_str(&line).unwrap();
    let gid = reg["registration"]["ghost_id"].as_str().unwrap().to_owned();
    let ack = json!({"type": "seed.register.ack", "registration_ack": {
        "status": "accepted", "code": 0, "message": "registered",
        "ghost_id": gid, "timestamp_ms": shared::now_ms()}});
    let mut w = s.try_clone().unwrap();
    w.write_all(format!("{ack}\n").as_bytes()).unwrap();
    let mut s = s;
    assert!(r.buffer().is_empty());
    while !stop.load(Ordering::SeqCst) {
        let f = match read_frame(&mut s) {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        let Ok(Envelope::Event(e)) = Envelope::from_frame(&f) else {
            return; // edgectl closes on anything but an event
        };
        if e.intent_id == "intent.session.heartbeat" {
            *hb.lock().unwrap() += 1;
        } else {
            *seen
                .lock()
                .unwrap()
                .entry(e.command_id.clone())
                .or_default() += 1;
        }
        let a = shared::envelope::EventAck {
            event_id: e.event_id,
            command_id: e.command_id,
            ghost_id: gid.clone(),
            ack_status: shared::envelope::AckStatus::Accepted,
            ack_code: 0,
            timestamp_ms: shared::now_ms(),
            extra: vec![],
        };
        let mut out = Envelope::EventAck(a).to_frame(f.message_id).unwrap();
        out.flags = 0x02;
        if w.write_all(&out.to_bytes().unwrap()).is_err() {
            return;
        }
    }
}

/// Go Mirage's `ExecuteAdminCommand` request (§4.3): a command frame with message_id 1, and
/// the empty `spawn` / `command` objects Go always sends.
fn go_execute_envelope(cmd: &Command) -> Value {
    let frame = Envelope::Command(cmd.clone()).to_frame(1).unwrap();
    json!({
        "action": "execute_envelope",
        "spawn": {"TargetName": "", "AdminAddr": ""},
        "command": {"intent_id": "", "seed_selector": "", "operation": "", "args": null},
        "command_frame": B64.encode(frame.to_bytes().unwrap()),
    })
}

/// Item 1: a command edgectl's Mirage runs through our Ghost's `execute_envelope` is
/// reported once, in the admin reply; nothing for it goes on the session (before: the event
/// was sent there too and edgectl's Mirage counted it again).
#[test]
fn an_admin_run_command_is_answered_in_the_admin_reply_only() {
    let dir = TempDir::new("interop-admin-once");
    let gm = GoMirage::start();
    let ghost = ghost(&dir, "ghost.ours", &gm.addr);
    let deadline = Instant::now() + T;
    while *gm.heartbeats.lock().unwrap() == 0 {
        assert!(
            Instant::now() < deadline,
            "ghost never registered with the Go-shaped Mirage"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A 2-step plan as edgectl's Mirage runs it: cmd.<intent>.<n>, one execute_envelope each.
    for n in 1..=2 {
        let cmd = Command {
            command_id: format!("cmd.intent.lab.{n}"),
            intent_id: "intent.lab".into(),
            ghost_id: "ghost.ours".into(),
            seed_selector: "seed.kv".into(),
            operation: "put".into(),
            args: [
                ("key".to_owned(), format!("k{n}")),
                ("value".to_owned(), "v".to_owned()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let r = admin(&ghost, go_execute_envelope(&cmd));
        assert_eq!(r["ok"], true, "{r}");
        let raw = B64
            .decode(r["data"]["event_frame"].as_str().unwrap())
            .unwrap();
        let f = decode_one(&raw, &Limits::default()).unwrap();
        assert_eq!(f.message_id, 1, "echoes the command frame's message_id");
        let Ok(Envelope::Event(e)) = Envelope::from_frame(&f) else {
            panic!("not an event");
        };
        assert_eq!(e.command_id, cmd.command_id);
        assert_eq!(e.outcome, Outcome::Success, "{e:?}");
    }
    // A replay of step 1 (a lost reply) is answered from the dedupe window, also only here.
    let r = admin(
        &ghost,
        go_execute_envelope(&Command {
            command_id: "cmd.intent.lab.1".into(),
            intent_id: "intent.lab".into(),
            ghost_id: "ghost.ours".into(),
            seed_selector: "seed.kv".into(),
            operation: "put".into(),
            args: [
                ("key".to_owned(), "k1".to_owned()),
                ("value".to_owned(), "v".to_owned()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        }),
    );
    assert_eq!(r["ok"], true, "{r}");
    // Barrier: the session is one ordered stream, and an admin-run event would have been
    // queued on it before the admin reply was written. Two heartbeats that started after
    // the replies prove nothing else is on its way.
    let hb0 = *gm.heartbeats.lock().unwrap();
    let deadline = Instant::now() + T;
    while *gm.heartbeats.lock().unwrap() < hb0 + 2 {
        assert!(
            Instant::now() < deadline,
            "no heartbeats: {}",
            tail(&ghost.proc.log_text(), 20)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = gm.seen.lock().unwrap().clone();
    assert!(
        seen.is_empty(),
        "admin-run events sent on the session (edgectl's Mirage counts these again): {seen:?}"
    );
    let st = admin(&ghost, json!({"action": "status"}));
    assert_eq!(
        st["data"]["Dispatcher"]["executed"], 2,
        "each step ran once; the replay did not run: {st}"
    );
}

/// Item 4: `spawn_ghost` answered in the shape edgectl's Mirage decodes: its untagged
/// `SpawnGhostResult` (`TargetName`, `GhostID`, `AdminAddr`; Go matches keys ignoring case
/// but not underscores), with our snake_case keys kept.
#[test]
fn spawn_ghost_answers_in_the_keys_edgectls_mirage_reads() {
    let dir = TempDir::new("interop-spawn");
    let gm = GoMirage::start();
    let ghost = ghost(&dir, "ghost.local", &gm.addr);
    let child_addr = format!("127.0.0.1:{}", e2e::free_port());
    // Go Mirage's SpawnGhostRequest is untagged too: {"TargetName","AdminAddr"}.
    let r = admin(
        &ghost,
        json!({
            "action": "spawn_ghost",
            "spawn": {"TargetName": "edge-1", "AdminAddr": child_addr},
            "command": {"intent_id": "", "seed_selector": "", "operation": "", "args": null},
            "command_frame": null,
        }),
    );
    assert_eq!(r["ok"], true, "{r}");
    let data = r["data"].as_object().unwrap();
    // encoding/json: an exact key match first, else the first key equal ignoring case.
    let go = |field: &str| -> String {
        data.get(field)
            .or_else(|| {
                data.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(field))
                    .map(|(_, v)| v)
            })
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (target, gid, addr) = (go("TargetName"), go("GhostID"), go("AdminAddr"));
    assert_eq!(gid, "ghost.local.edge.1", "{r}");
    assert_eq!(target, gid, "{r}");
    assert_eq!(addr, child_addr, "{r}");
    // Ours stay readable.
    assert_eq!(r["data"]["ghost_id"], gid.as_str());
    assert_eq!(r["data"]["admin_addr"], child_addr.as_str());
    assert_eq!(r["data"]["target_name"], gid.as_str());
    // The Mirage then talks to the child at that address (bind_mirage, status).
    let deadline = Instant::now() + T;
    let status = loop {
        let attempt = (|| -> std::io::Result<Value> {
            let s = TcpStream::connect(&addr)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut w = s.try_clone()?;
            w.write_all(format!("{}\n", json!({"action": "status", "token": TOKEN})).as_bytes())?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line)?;
            Ok(serde_json::from_str(&line).unwrap_or(Value::Null))
        })();
        match attempt {
            Ok(v) if v["ok"] == true => break v,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "child admin not answering at {addr}: {attempt:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!(status["data"]["GhostID"], gid.as_str(), "{status}");
}
