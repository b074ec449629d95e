#!/usr/bin/env bash
# Writes src/link/sidecar.order: the functions a `warden proxy` sidecar pair
# runs from start-up through idle probes and a few requests, in the order
# the compiler laid them out, one mangled symbol per line. build.rs hands the file to the linker
# (lld's --symbol-ordering-file) for release builds of `warden`, so that the
# code a sidecar runs sits together instead of spread over the binary.
#
# Why: the kernel maps a binary's pages in 64 KiB at a time around each
# page a process touches. Start-up runs about 3 MB of code spread over
# most of the 20 MB of text, so an idle sidecar had 12 MB of it resident.
# Symbols no longer in the binary are skipped by the linker: a stale file
# costs memory, never correctness. Run again after a dependency or
# toolchain upgrade (symbol hashes change then; the test in src/link fails
# when Cargo.lock or a Cargo.toml changed), or when a release sidecar's idle
# RSS grows:
#
#   bash benches/link-order.sh        # needs valgrind, curl, python3, nm
#
# WARDEN_BIN: a release binary to profile, built with WARDEN_LINK_ORDER=off
# (default: builds one so), so that the list follows the compiler's layout.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
for tool in valgrind curl python3 nm; do
    command -v "$tool" >/dev/null || { echo "link-order: needs $tool" >&2; exit 2; }
done
if [ -z "${WARDEN_BIN:-}" ]; then
    WARDEN_LINK_ORDER=off cargo build --release --locked --bin warden
    cp "$root/target/release/warden" "$root/target/release/warden-unordered"
    WARDEN_BIN=$root/target/release/warden-unordered
fi

work=$(mktemp -d /tmp/warden-link-order.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Five distinct ports on loopback, picked by the kernel.
read -r app inbound outbound admin_in admin_out < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

"$WARDEN_BIN" ca init --trust-domain order.test --dir "$work/ca" >/dev/null
"$WARDEN_BIN" svid issue --ca-dir "$work/ca" --spiffe-id spiffe://order.test/ns/demo/sa/server --out "$work/server" >/dev/null
"$WARDEN_BIN" svid issue --ca-dir "$work/ca" --spiffe-id spiffe://order.test/ns/demo/sa/client --out "$work/client" >/dev/null

cat >"$work/in.toml" <<TOML
[identity]
cert = "$work/server/svid.pem"
key = "$work/server/svid.key"
bundle = "$work/server/bundle.pem"
[service]
name = "server"
[inbound]
listen = "127.0.0.1:$inbound"
app = "127.0.0.1:$app"
[admin]
listen = "127.0.0.1:$admin_in"
TOML
cat >"$work/out.toml" <<TOML
[identity]
cert = "$work/client/svid.pem"
key = "$work/client/svid.key"
bundle = "$work/client/bundle.pem"
[service]
name = "client"
[[outbound.routes]]
listen = "127.0.0.1:$outbound"
upstream = "127.0.0.1:$inbound"
identity = "spiffe://order.test/ns/demo/sa/server"
[admin]
listen = "127.0.0.1:$admin_out"
TOML

mkdir -p "$work/www" && echo hello >"$work/www/index.html"
python3 -m http.server "$app" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
pids+=($!)
for side in in out; do
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/$side.cg" \
        "$WARDEN_BIN" proxy --config "$work/$side.toml" >"$work/$side.log" 2>&1 &
    pids+=($!)
done

# Up to 120 s for both to serve under valgrind (about 50 times slower).
up() { curl -sf -o /dev/null "http://127.0.0.1:$1/ready"; }
for _ in $(seq 240); do
    up "$admin_in" && up "$admin_out" && break
    sleep 0.5
done
up "$admin_in" && up "$admin_out" || { cat "$work"/*.log >&2; echo "link-order: sidecars did not start" >&2; exit 1; }

# What an idle sidecar does (probes, a scrape), then requests: HTTP/1.1
# keep-alive and new connections, h2c, and a refused path.
for _ in 1 2 3; do
    for a in "$admin_in" "$admin_out"; do
        curl -sf -o /dev/null "http://127.0.0.1:$a/ready"
        curl -sf -o /dev/null "http://127.0.0.1:$a/live" || true
        curl -sf -o /dev/null "http://127.0.0.1:$a/metrics"
    done
done
url="http://127.0.0.1:$outbound/index.html"
curl -sf "$url" "$url" "$url" "$url" "$url" "$url" "$url" "$url" >/dev/null
for _ in 1 2 3 4; do curl -sf -o /dev/null "$url"; done
curl -sf --http2-prior-knowledge "$url" "$url" "$url" >/dev/null || true
curl -s -o /dev/null -X POST --data 'x=1' "$url" || true

# SIGINT: a clean shutdown, after which callgrind writes its profile.
kill -INT "${pids[1]}" "${pids[2]}"
wait "${pids[1]}" "${pids[2]}" || true
pids=("${pids[0]}")

{
echo "# $("${RUSTC:-rustc}" -V)"
# What decides the crates' hashes; a test (src/link) fails once it changes.
echo "# dependencies sha256:$(cat Cargo.lock Cargo.toml proxy/Cargo.toml control/Cargo.toml | sha256sum | cut -d' ' -f1) (Cargo.lock, Cargo.toml, proxy/Cargo.toml, control/Cargo.toml)"
python3 - "$WARDEN_BIN" "$work/in.cg" "$work/out.cg" <<'PY'
import re, subprocess, sys
binary, profiles = sys.argv[1], sys.argv[2:]
defined = {}
nm = subprocess.run(["nm", binary], check=True, capture_output=True, text=True).stdout
for line in nm.splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1] in "tT":
        defined[parts[2]] = int(parts[0], 16)
cost = {}
for path in profiles:
    # Callgrind's format: `fn=(id) name` names a function the first time
    # (so does `cfn=`), `fn=(id)` after; cost lines follow their `fn=`; the
    # line after `calls=` is a call's inclusive cost, not the caller's own.
    names, current, skip = {}, None, False
    for line in open(path):
        m = re.match(r"^c?fn=\((\d+)\)(?: (.*))?$", line)
        if m:
            if m.group(2):
                names[m.group(1)] = re.sub(r"'\d+$", "", m.group(2).strip())
            if line.startswith("fn="):
                current = names.get(m.group(1))
            continue
        if line.startswith("calls="):
            skip = True
            continue
        if line[:1] in "0123456789+-*":
            if skip:
                skip = False
                continue
            parts = line.split()
            if current in defined and len(parts) >= 2:
                cost[current] = cost.get(current, 0) + int(parts[1])
# In the order the compiler laid them out: callers stay next to their
# callees as before, only the code that did not run is taken out from
# between them (hottest first cost 7% more CPU per request in the peers
# bench than no order at all).
ordered = sorted(cost, key=lambda n: (defined[n], n))
sys.stdout.write("".join(n + "\n" for n in ordered))
PY
} >"$work/order"
listed=$(grep -vc '^#' "$work/order" || true)
if [ "$listed" -lt 1000 ]; then
    echo "link-order: only $listed functions found (a stripped binary?); src/link/sidecar.order left as it was" >&2
    exit 1
fi
cp "$work/order" "$root/src/link/sidecar.order"
echo "link-order: $listed functions in src/link/sidecar.order; build again (cargo build --release) to use them"
