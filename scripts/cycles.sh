#!/usr/bin/env bash
# Lists import cycles between the files of each crate: a file that names `crate::a::b` or
# `super::x` depends on the file of that module. Prints each strongly connected set of two or
# more files (one line per set).
# Usage: scripts/cycles.sh [--check] [crate_dir ...]   (default: shared actorkit mirage ghost tests)
# Without --check it is a report (exit 0). With --check it is the gate `make lint` runs: exit 1
# when a set is printed that is not listed in scripts/cycles.allow (a new cycle, or a known
# one that grew); the sets still listed there are the ones not yet removed (issue 18).
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
if [ "${1:-}" = "--check" ]; then
    check=1
    shift
fi
CHECK=$check python3 - "${@:-shared actorkit mirage ghost tests}" <<'PY'
import os, re, sys
crates = " ".join(sys.argv[1:]).split()
check = os.environ.get("CHECK") == "1"
allowed = set()
if check and os.path.exists("scripts/cycles.allow"):
    for line in open("scripts/cycles.allow", encoding="utf-8"):
        line = line.strip()
        if line and not line.startswith("#"):
            allowed.add(line)
new = []
path_re = re.compile(r'\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)')
group_re = re.compile(r'\b(crate|super)::\{([^}]*)\}', re.S)
total = 0
for crate in crates:
    src = os.path.join(crate, "src")
    if not os.path.isdir(src):
        continue
    mods = {}  # module path tuple -> file
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            p = os.path.join(root, f)
            rel = os.path.relpath(p, src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            if f == "main.rs" or (len(rel) and rel[0] == "bin"):
                continue  # binaries are their own crates
            mods[tuple(rel)] = p
    def resolve(parts):
        for n in range(len(parts), 0, -1):
            if tuple(parts[:n]) in mods:
                return mods[tuple(parts[:n])]
        return None
    edges = {f: set() for f in mods.values()}
    for mpath, f in mods.items():
        text = open(f, encoding="utf-8").read()
        text = re.sub(r'#\[cfg\(test\)\]\s*mod tests\s*\{.*', '', text, flags=re.S)
        refs = []
        for kind, body in group_re.findall(text):
            for item in body.split(","):
                item = item.strip().split(" as ")[0]
                if item:
                    refs.append((kind, item.split("::")))
        for kind, rest in path_re.findall(text):
            refs.append((kind, rest.strip(":").split("::")))
        for kind, parts in refs:
            # `super` is the parent module: for a/b.rs and for a/b/mod.rs alike, `a`.
            full = parts if kind == "crate" else list(mpath[:-1]) + parts
            t = resolve(full)
            if t and t != f:
                edges[f].add(t)
    # Tarjan's strongly connected components.
    index, low, stack, on, out, i = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        index[v] = low[v] = i[0]; i[0] += 1
        stack.append(v); on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    for comp in sorted(out):
        line = f"{crate}: " + " <-> ".join(comp)
        print(line)
        total += 1
        if line not in allowed:
            new.append(line)
sys.stdout.flush()
print(f"{total} cycle set(s)", file=sys.stderr)
if check and new:
    for line in new:
        print(f"new import cycle (not in scripts/cycles.allow): {line}", file=sys.stderr)
    sys.exit(1)
PY
