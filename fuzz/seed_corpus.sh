#!/usr/bin/env bash
# Writes seed corpora for every fuzz target from the edgectl vectors (frame_hex, payload_hex,
# line_hex), plus a few hand-made TLV payloads for types the vectors do not cover validly.
# Usage: fuzz/seed_corpus.sh [VECTORS_DIR]   (default: ../../shared/vectors, beside the repo)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
vectors="${1:-${VECTORS:-$here/../../shared/vectors}}"
python3 - "$vectors" "$here/corpus" <<'PY'
import glob, hashlib, json, os, struct, sys

vectors, out = sys.argv[1], sys.argv[2]
types = {1: "issue", 2: "command", 3: "seed_execute", 4: "seed_result",
         5: "event", 6: "report", 7: "error", 8: "event_ack"}
targets = ["frame_stream", "tlv", "handshake_line"] + ["envelope_" + t for t in types.values()]
written = {t: 0 for t in targets}

def put(target, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, "seed-" + hashlib.sha1(data).hexdigest()[:16])
    if not os.path.exists(p):
        with open(p, "wb") as f:
            f.write(data)
        written[target] += 1

def field(fid, ty, value):
    return struct.pack(">HBI", fid, ty, len(value)) + value

valid_frames = []
for path in sorted(glob.glob(os.path.join(vectors, "*.json"))):
    v = json.load(open(path))
    if "frame_hex" in v:
        frame = bytes.fromhex(v["frame_hex"])
        # frame_stream takes its split point from the first byte: whole, middle, byte 1.
        for k in (0, 0x80, 0xFF):
            put("frame_stream", bytes([k]) + frame)
        if v.get("kind") == "frame":
            valid_frames.append(frame)
    if "payload_hex" in v:
        payload = bytes.fromhex(v["payload_hex"])
        put("tlv", payload)
        t = types.get(v.get("message_type"))
        if t:
            put("envelope_" + t, payload)
    if "line_hex" in v:
        put("handshake_line", bytes.fromhex(v["line_hex"]))

# A stream of every valid frame back to back.
put("frame_stream", bytes([0x55]) + b"".join(valid_frames))

# Our ext error envelope (800 u32, 801 string, 802 u64), which no vector carries validly.
put("envelope_error", field(800, 3, struct.pack(">I", 1300)) + field(801, 6, b"bad args")
    + field(802, 4, struct.pack(">Q", 9)) + field(2, 6, b"cmd.1"))
# An event with the ext result fields, and a command with the ext lock/deadline/attempt.
put("envelope_event", b"".join(field(i, 6, s) for i, s in [
    (4, b"evt.1"), (2, b"cmd.1"), (1, b"intent.1"), (200, b"ghost.alpha"), (300, b"seed.flow"),
    (500, b"error")]) + field(3, 6, b"exec.1") + field(400, 6, b"failed")
    + field(401, 7, b"out") + field(402, 7, b"err") + field(403, 3, struct.pack(">I", 2))
    + field(800, 3, struct.pack(">I", 1400)) + field(801, 6, b"exit 2"))
put("envelope_command", b"".join(field(i, 6, s) for i, s in [
    (2, b"cmd.1"), (1, b"intent.1"), (200, b"ghost.alpha"), (201, b"seed.kv"), (202, b"set")])
    + field(203, 7, b'{"k":"v"}') + field(204, 4, struct.pack(">Q", 3))
    + field(205, 4, struct.pack(">Q", 1700000000000)) + field(206, 3, struct.pack(">I", 1)))

# Control-plane targets (issue 17): admin NDJSON lines, intent bodies, plan_check.
import base64, glob as _g
targets += ["admin_line", "intent_body", "plan_check"]
written.update({"admin_line": 0, "intent_body": 0, "plan_check": 0})
cmd_frames = [f for f in valid_frames if struct.unpack(">I", f[12:16])[0] == 2] if valid_frames else []
admin = [
    b'{"action":"status"}',
    b'{"action":"list_seeds","token":"s3cret"}',
    b'{"Action":"execute","Token":"s3cret","Command":{"seed_selector":"seed.fs","operation":"read","args":{"path":"a.txt"},"command_id":"c1","intent_id":"i1"}}',
    b'{"action":"execute","command":{"seed_selector":"seed.flow","operation":"sleep","args":{"ms":"5"}}}',
    b'{"action":"execution_by_command_id","command_id":"cmd.1"}',
    b'{"action":"recent_events","limit":3}',
    b'{"action":"verification","limit":-1}',
    b'{"action":"spawn_ghost","spawn":{"TargetName":"g9","admin_addr":"127.0.0.1:0"}}',
    b'{"action":"bind_mirage","mirage_id":"m1"}',
    b'{"action":"actors"}',
    b'{"action":"nope"}',
]
admin += [json.dumps({"action": "execute_envelope", "command_frame": base64.b64encode(f).decode()}).encode()
          for f in cmd_frames]
for i, line in enumerate(admin):
    # byte 0: limit (0 = the real 1 MiB; 0x80|n = n+1 bytes); byte 1: split point.
    put("admin_line", bytes([0, 7 * i]) + line + b"\n")
    put("admin_line", bytes([0x80 | 40, 3]) + line + b"\r\n" + b'{"action":"status"}\n')
put("admin_line", bytes([0, 0]) + b"\n".join(admin) + b"\n")

bodies = [open(p, "rb").read() for p in sorted(_g.glob(os.path.join(os.path.dirname(out), "..", "config", "plans", "*.toml")))]
bodies += [
    b'{"actor":"a","target_scope":"ghost:g*","objective":"o","step":[{"seed":"seed.fs","operation":"append","args":{"path":"x","content":"y","n":3,"f":1.5,"b":true},"on":"g1","blocking":true,"timeout":"10s","retries":2}]}',
    b'{"intent_id":"i-1","actor":"a","target_scope":"ghost:*","objective":"o","keep":"2m","offline":"catch_up","steps":[{"seed":"seed.service","operation":"start","check":{"observed":{"state":"running"}},"uri":"redis://127.0.0.1:6390/0"}]}',
    b'actor="a"\ntarget_scope="ghost:edge-?"\nobjective="o"\noffline="fail"\n[[step]]\nseed="seed.kv"\noperation="put"\nargs={key="k",value="v"}\non="local"\ncheck={operation="get",args={key="k"},expect="v"}\ncontinue_on_error=true\ntimeout=500\n[[step]]\nseed="seed.flow"\noperation="sleep"\non="all"\noffline="skip"\n',
]
for b in bodies:
    put("intent_body", b)
    # plan_check: 9 fleet bytes (all four Ghosts, connected, hosting every seed with every
    # operation; then a sparser fleet), the body, NUL, a script of grants/events/ticks.
    put("plan_check", bytes([0x1f, 0x15, 0x7f, 0x15, 0x7f, 0x15, 0xff, 0x15, 0x3f]) + b + b"\0" + bytes([3, 0, 3, 0, 4, 0x10, 5, 3, 0]))
    put("plan_check", bytes([0x05, 0x03, 0x01, 0x08, 0x1f, 0, 0, 0, 0]) + b + b"\0" + bytes([0x10, 0x20, 6, 7]))

for t in targets:
    n = len(os.listdir(os.path.join(out, t))) if os.path.isdir(os.path.join(out, t)) else 0
    print(f"{t}: {written[t]} new seeds, {n} files")
PY
