#!/usr/bin/env bash
# The fuzz step of CI (.ci/run), also the way to fuzz by hand: installs cargo-fuzz if missing,
# builds every target once, then runs each from its seeds for a bounded time.
#
#   FUZZ_SECONDS   time per target (default 30)
#   FUZZ_JOBS      targets fuzzed at once (default: the number of CPUs)
#   FUZZ_TARGETS   space-separated subset of fuzz_targets/ (default: all)
#   FUZZ_RSS_MB    memory limit per fuzzing process (default 1024)
#
# Inputs the fuzzer adds go to corpus-run/<target>/ (ignored by git; kept between local runs, so
# a later run starts where the last one ended). A crash (panic, abort, stack overflow, allocation
# over the cap of fuzz/src/lib.rs, input slower than 10 s, RSS over the limit) is saved under
# artifacts/<target>/, printed as base64, and fails the script: fix the bug and keep the input in
# tests/fuzz_regressions/<target>/ (docs/security.md, "Fuzzing").
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-30}
jobs=${FUZZ_JOBS:-$(nproc)}
rss_mb=${FUZZ_RSS_MB:-1024}
targets=${FUZZ_TARGETS:-$(basename -s .rs fuzz_targets/*.rs)}

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version '^0.13'
fi
host=$(rustc -vV | sed -n 's/^host: //p')
# cargo fuzz does not pass --locked on, so the lock file is checked here. fuzz/Cargo.lock is the
# main Cargo.lock plus libFuzzer's crates: when a dependency change of the main crate has left it
# behind, it is refreshed from the main one for this run, with a warning to commit the result.
if ! cargo fetch --locked --manifest-path Cargo.toml --target "$host" 2>/dev/null; then
    echo "warning: fuzz/Cargo.lock is out of date; refreshed from Cargo.lock for this run: commit fuzz/Cargo.lock" >&2
    cp ../Cargo.lock Cargo.lock
    cargo fetch --manifest-path Cargo.toml --target "$host"
fi

# No sanitizer: the crate forbids `unsafe`, the build is faster, and it needs no nightly
# toolchain. Coverage instrumentation, debug assertions and overflow checks are on.
started=$(date +%s)
cargo fuzz build --sanitizer none
echo "fuzz build: $(($(date +%s) - started)) s"

bin=target/$host/release
mkdir -p target/fuzz-logs

# One target: its seeds are read, what it adds goes to corpus-run/. Prints one summary line.
fuzz_one() {
    local t=$1 log=target/fuzz-logs/$1.log rc=0
    mkdir -p "corpus-run/$t" "artifacts/$t"
    touch "$log.start"
    "$bin/$t" "corpus-run/$t" "corpus/$t" \
        -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout=10 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || rc=$?
    local runs speed last
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [^ ]+' || true)
    if [ "$rc" -eq 0 ]; then
        echo "fuzz $t: ${runs:-?} runs, ${speed:-?} exec/s, $last: no crash"
        return 0
    fi
    {
        echo "fuzz $t: FAILED (exit $rc) after ${runs:-?} runs; the end of its log:"
        tail -n 40 "$log"
        find "artifacts/$t" -type f -newer "$log.start" | while read -r f; do
            echo "--- $f (base64; keep it in tests/fuzz_regressions/$t/):"
            base64 -w 76 "$f"
        done
    } >&2
    return 1
}

status=0
running=0
for t in $targets; do
    fuzz_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || status=1
        running=$((running - 1))
    fi
done
while [ "$running" -gt 0 ]; do
    wait -n || status=1
    running=$((running - 1))
done
echo "fuzz step: $(($(date +%s) - started)) s in all, ${seconds} s per target, ${jobs} at a time"
exit "$status"
