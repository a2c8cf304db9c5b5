# Per-hop gaps (µs: median, min, max) of one-at-a-time intents from a `perf trace` of one
# mirage and one ghost (see one_intent_hops.sh). Markdown rows on stdout.
import re, sys, statistics as st
rx = re.compile(r'^\s*([\d.]+) \(\s*([\d.]+) ms\): (.+?)/(\d+) (\w+)\((?:fd: (\d+))?.*?\)\s+= (-?\d+)')
ev = []
for l in open(sys.argv[1]):
    m = rx.match(l)
    if m:
        ts, dur, comm, tid, sc, fd, ret = m.groups()
        ev.append((float(ts), float(dur), comm, int(tid), sc, int(fd) if fd else -1, int(ret)))
ev.sort()
# Threads are told apart by name: Mirage's sessions and HTTP run on "actix-rt|system…"
# threads, the Ghost's on "ghost…"; the HTTP connection by its fd (argv[2]).
http_fd = int(sys.argv[2])
hops = []
i = 0
names = ["http_read","cmd_written","ghost_read","ghost_store_first_write","ghost_store_last_write_before_send","event_sent","mirage_event_read","ack_written","http_answer"]
chain = ["http_read","cmd_written","ghost_read","ghost_store_first_write","ghost_store_last_write_before_send","event_sent","mirage_event_read","http_answer"]
while i < len(ev):
    e = ev[i]
    if e[4] == "recvfrom" and e[5] == http_fd and e[6] > 0:
        t = {"http_read": e[0]}
        logs = 0; logt = 0.0
        j = i + 1; stage = 0; gwrites = []
        while j < len(ev):
            x = ev[j]
            ts, dur, comm, tid, sc, fd, ret = x
            if sc == "write" and fd == 2:
                logs += 1; logt += dur
            if stage == 0 and sc == "writev" and comm.startswith("actix-rt") and ret > 0:
                t["cmd_written"] = ts; stage = 1; sfd = fd
            elif stage == 1 and sc == "recvfrom" and comm.startswith("ghost") and ret > 0:
                t["ghost_read"] = ts; stage = 2
            elif stage == 2 and sc == "pwrite64" and comm.startswith("ghost"):
                gwrites.append(ts)
            elif stage == 2 and sc == "writev" and comm.startswith("ghost") and ret > 0:
                if gwrites:
                    t["ghost_store_first_write"] = gwrites[0]; t["ghost_store_last_write_before_send"] = gwrites[-1]
                t["event_sent"] = ts; stage = 3
            elif stage == 3 and sc == "recvfrom" and comm.startswith("actix-rt") and fd == sfd and ret > 0:
                t["mirage_event_read"] = ts; stage = 4
            elif stage == 4 and sc == "writev" and comm.startswith("actix-rt") and fd == sfd and ret > 0 and "ack_written" not in t:
                t["ack_written"] = ts
            elif stage == 4 and sc == "sendto" and fd == http_fd:
                t["http_answer"] = ts
            if "ack_written" in t and "http_answer" in t:
                break
            j += 1
        if "http_answer" in t and len(t) == len(names):
            t["logs"] = logs; t["log_ms"] = logt
            hops.append(t)
        i = j
    i += 1
print("intents traced:", len(hops))
prev = chain[0]
rows = []
for n in chain[1:]:
    d = [ (h[n]-h[prev])*1000 for h in hops]
    rows.append((f"{prev} -> {n}", st.median(d), min(d), max(d)))
    prev = n
d=[(h["ack_written"]-h["mirage_event_read"])*1000 for h in hops]
rows.append(("(mirage_event_read -> ack_written)", st.median(d), min(d), max(d)))
tot = [ (h["http_answer"]-h["http_read"])*1000 for h in hops]
for r in rows: print("| %s | %.0f | %.0f | %.0f |" % r)
print("| total http_read -> http_answer | %.0f | %.0f | %.0f |" % (st.median(tot), min(tot), max(tot)))
print("log lines per intent (mirage+ghost stderr)", st.median(h["logs"] for h in hops), "median log write us", st.median(h["log_ms"]*1000 for h in hops))
