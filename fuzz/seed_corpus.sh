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

for t in targets:
    n = len(os.listdir(os.path.join(out, t))) if os.path.isdir(os.path.join(out, t)) else 0
    print(f"{t}: {written[t]} new seeds, {n} files")
PY
