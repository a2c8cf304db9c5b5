#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 60) each, one after another, and prints
# one summary line per target. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz --locked`). Logs go to fuzz/logs/ (ignored by git).
#
#   fuzz/run.sh                  # every target, 60 s each
#   FUZZ_SECONDS=10 fuzz/run.sh tlv handshake_line
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
secs="${FUZZ_SECONDS:-60}"
toolchain="${FUZZ_TOOLCHAIN:-+nightly}"
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo "$toolchain" fuzz list)
fi
[ -d corpus ] || ./seed_corpus.sh >/dev/null
mkdir -p logs
# One build for all targets (release, debug assertions and overflow checks on, ASan).
cargo "$toolchain" fuzz build >logs/build.log 2>&1 || { tail -20 logs/build.log; exit 2; }
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    dict=dict/wire.dict
    [ "$t" = handshake_line ] && dict=dict/handshake.dict
    [ "$t" = admin_line ] && dict=dict/admin.dict
    case "$t" in intent_body | plan_check) dict=dict/intent.dict ;; esac
    start=$(date +%s)
    cargo "$toolchain" fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -dict="$dict" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        >"logs/$t.log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -1)
    crashes=$(( $(find "artifacts/$t" -type f | wc -l) - before ))
    cov=$(grep -oE 'cov: [0-9]+' "logs/$t.log" | tail -1 | grep -oE '[0-9]+')
    files=$(find "corpus/$t" -type f | wc -l)
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes="?(rc=$rc)"; fi
    [ "$rc" -ne 0 ] && status=1
    echo "target=$t seconds=$took execs=${execs:-0} crashes=$crashes cov=${cov:-?} corpus=$files"
done
exit $status
