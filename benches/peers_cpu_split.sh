#!/usr/bin/env bash
# User and kernel CPU per request of each sidecar pair of ../shared/peers,
# in the closed loop (wrk -t2 -c32, 10 s after 2 s of warm-up), and how busy
# the machine was. The kernel's share is what a proxy in user space cannot
# avoid: loopback TCP in and out of each sidecar, per request and response.
#   benches/peers_cpu_split.sh [ROUNDS] [TARGETS...]
#   (default: 3 rounds of "warden haproxy nginx", alternated)
# PIN="A B" pins the outbound sidecar (and its children) to CPU A and the
# inbound one to CPU B with taskset: "0 1" apart, "1 1" on one core, to see
# how much the scheduler's placement of the two decides the throughput.
# Needs `../shared/peers/setup.sh` once and valid certificates
# (`../shared/peers/pki.sh`); WARDEN_BIN as for the peers' warden target.
set -uo pipefail
peers=${PEERS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../shared/peers" 2>/dev/null && pwd)}
[[ -f $peers/common.sh ]] || { echo "no peers harness at ${peers:-../shared/peers} (set PEERS)" >&2; exit 2; }
# shellcheck source=/dev/null
source "$peers/common.sh"
for f in "$peers"/targets/*.sh; do
    # shellcheck source=/dev/null
    source "$f"
done
rounds=${1:-3}
shift || true
targets=("${@:-warden haproxy nginx}")
read -ra targets <<<"${targets[*]}"
mkdir -p "$PEERS_RUN"
bash "$peers/backend.sh" start >/dev/null 2>&1 || { echo "the backend did not start" >&2; exit 1; }

# Sum of utime and stime (ticks) of the sidecars and their children (nginx's
# workers).
ticks() {
    local u=0 s=0 p a b
    for p in "$@"; do
        read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo "0 0")
        u=$((u + a)) s=$((s + b))
    done
    echo "$u $s"
}
machine() { awk '/^cpu /{print $2+$3+$4+$7+$8, $5+$6}' /proc/stat; }

for r in $(seq 1 "$rounds"); do
    for t in "${targets[@]}"; do
        "target_${t}_start" >/dev/null 2>&1 || { echo "$t did not start" >&2; "target_${t}_stop" >/dev/null 2>&1; continue; }
        pids=$("target_${t}_pids" | awk '{print $2}')
        all=$pids
        for p in $pids; do all="$all $(pgrep -P "$p" | tr '\n' ' ')"; done
        if [[ -n ${PIN:-} ]]; then
            read -r cpu_out cpu_in <<<"$PIN"
            "target_${t}_pids" | while read -r role p; do
                cpu=$cpu_in
                [[ $role == out ]] && cpu=$cpu_out
                for q in $p $(pgrep -P "$p"); do taskset -a -p -c "$cpu" "$q" >/dev/null; done
            done
        fi
        wrk -t2 -c32 -d2s "http://$HOST:$OUT_PORT/" >/dev/null
        read -r u0 s0 < <(ticks $all)
        read -r b0 i0 < <(machine)
        out=$(wrk -t2 -c32 -d10s "http://$HOST:$OUT_PORT/")
        read -r u1 s1 < <(ticks $all)
        read -r b1 i1 < <(machine)
        "target_${t}_stop" >/dev/null 2>&1
        n=$(grep -oE '^\s*[0-9]+ requests' <<<"$out" | awk '{print $1}')
        bad=$(grep -c 'Non-2xx' <<<"$out")
        awk -v r="$r" -v t="$t" -v n="${n:-0}" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$CLK_TCK" \
            -v b=$((b1 - b0)) -v i=$((i1 - i0)) -v bad="$bad" -v pin="${PIN:+ pinned $PIN}" 'BEGIN {
            if (n == 0) { printf "round %d %-8s no requests\n", r, t; exit }
            printf "round %d %-8s%s %6.0f req/s  user %5.1f µs  kernel %5.1f µs  total %5.1f µs per request (pair)  machine %3.0f%% busy%s\n",
                r, t, pin, n / 10, u * 1e6 / hz / n, s * 1e6 / hz / n, (u + s) * 1e6 / hz / n, 100 * b / (b + i),
                bad ? "  NON-2XX ANSWERS" : ""
        }'
    done
done
bash "$peers/backend.sh" stop >/dev/null 2>&1
