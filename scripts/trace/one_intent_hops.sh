#!/bin/bash
# Per-hop timing of one-step `seed.flow echo` intents through one real `ghost serve`, seen
# from outside: `perf trace` records the syscalls of both processes (one clock), and hops.py
# takes, per intent, the HTTP read, the command's write, the Ghost's read, its outbox writes,
# the event's write, Mirage's read of it, the ack and the HTTP answer (BENCHMARKS.md, issue 20).
# Intents go one at a time, 30 ms apart, over one keep-alive HTTP connection; default logging.
#   scripts/trace/one_intent_hops.sh [BIN_DIR (default target/release)] [INTENTS (default 60)]
# perf's syscall tracing slows every traced call: read the shape, not the absolute figures.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${1:-target/release}; N=${2:-60}
BIN=$(cd "$BIN" && pwd)
D=$(mktemp -d /tmp/hops.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SP=$(port); AP=$(port)
cat > "$D/mirage.toml" <<T
listen = "127.0.0.1:$SP"
data_dir = "$D/mirage"
local_ghost = ""
[api]
listen = "127.0.0.1:$AP"
T
cat > "$D/g.toml" <<T
ghost_id = "g-0"
data_dir = "$D/g0"
[mirage]
addresses = ["127.0.0.1:$SP"]
[admin]
listen = "127.0.0.1:0"
T
"$BIN/mirage" serve --config "$D/mirage.toml" > "$D/m.log" 2>&1 & MP=$!
"$BIN/ghost" serve --config "$D/g.toml" > "$D/g.log" 2>&1 & GP=$!
trap 'kill $GP $MP 2>/dev/null || true; wait $GP $MP 2>/dev/null || true; rm -rf "$D"' EXIT
for _ in $(seq 100); do grep -q "registered with Mirage" "$D/g.log" && break; sleep 0.1; done
python3 "$HERE/drive.py" 20 1000 "$AP" > /dev/null  # warm-up
perf trace -T -p "$MP,$GP" -e fsync,fdatasync,sendto,recvfrom,write,writev,pwrite64 -o "$D/p.trace" 2> "$D/perf.err" & TP=$!
sleep 2
python3 "$HERE/drive.py" "$N" 2000 "$AP"
kill -INT $TP; wait $TP || true
# The HTTP connection is the one read with actix's 8 KiB buffer.
FD=$(grep -m1 -o 'recvfrom(fd: [0-9]*, ubuf: [^,]*, size: 8192)' "$D/p.trace" | sed 's/recvfrom(fd: \([0-9]*\).*/\1/')
python3 "$HERE/hops.py" "$D/p.trace" "$FD"
