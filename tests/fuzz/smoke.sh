#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 30) over its checked-in
# corpus; new inputs go to a scratch directory (the corpus is not changed).
# Stops with the target's log on the first crash. Needs nightly and
# cargo-fuzz (`cargo install cargo-fuzz`). WARDEN_FUZZ_BUILD adds flags to
# cargo fuzz run (CI: `--dev`, a debug build).
set -uo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-30}"
targets=$(cargo +nightly fuzz list --fuzz-dir tests/fuzz) || exit 1
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $targets; do
    mkdir -p "$scratch/$target" "tests/fuzz/corpus/$target"
    corpus="tests/fuzz/corpus/$target"
    # A debug build parses Cedar at about a second an input: replay only
    # the hand-written seeds there (a corpus of hundreds takes minutes).
    if [ -n "${WARDEN_FUZZ_BUILD:-}" ] && [ -d "tests/fuzz/seeds/$target" ]; then
        corpus="tests/fuzz/seeds/$target"
    fi
    log="$scratch/$target.log"
    # shellcheck disable=SC2086 # the flags are meant to split
    if ! cargo +nightly fuzz run ${WARDEN_FUZZ_BUILD:-} --fuzz-dir tests/fuzz "$target" \
        "$scratch/$target" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        echo "== $target: FAILED"
        tail -n 60 "$log"
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    echo "== $target: ok, $runs runs in ${seconds}s"
done
