#!/usr/bin/env bash
# Instructions per HTTP/1.1 keep-alive request through anyedge, counted by callgrind (repeatable,
# unlike time). Runs anyedge under valgrind in front of an nginx origin, sends N1 then N2 requests
# in two runs with h2load --h1, and reports (I(N2) - I(N1)) / (N2 - N1), so start-up cancels out.
# With H2=1 the client speaks HTTP/2 with prior knowledge (h2c: h2load without --h1, one stream
# per connection at a time, as h2load's default), the origin still HTTP/1.1.
#   bench/callgrind.sh                 # edge only; N1=2000 N2=12000, 8 client connections
#   BACKHAUL=1 bench/callgrind.sh      # an edge and a worker joined by backhaul (mutual TLS,
#                                      # HTTP/2), both under callgrind: the extra hop's cost
#   C=64 bench/callgrind.sh            # client connections (the bench harness uses 64)
#   ACCESS_LOG=true bench/callgrind.sh # with the access log on (the default config's)
#   H2=1 bench/callgrind.sh            # clients on h2c (the bench harness's h2c_small)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/anyedge-target}"
ANYEDGE="${ANYEDGE:-$CARGO_TARGET_DIR/release/anyedge}"
N1="${N1:-2000}"; N2="${N2:-12000}"; C="${C:-8}"; BACKHAUL="${BACKHAUL:-0}"; H2="${H2:-0}"
if [ "$H2" = "1" ]; then proto=(); kind="h2c (HTTP/2, prior knowledge)"; else proto=(--h1); kind="HTTP/1.1 keep-alive"; fi
for t in valgrind nginx h2load curl; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }; done
work="$(mktemp -d /tmp/anyedge-callgrind.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap 'cp "$work"/cg.* "$KEEP"/ 2>/dev/null; cleanup' EXIT
origin=18380; proxy=18381; admin=18382; worker_admin=18383; backhaul=18384
mkdir -p "$work/origin"
cat > "$work/origin/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log stderr warn; pid $work/origin/nginx.pid;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$origin; location /ok { return 200 "ok"; } } }
CONF
nginx -p "$work/origin/" -c "$work/origin/nginx.conf" & pids+=($!)
# config NODE_ID ROLES ADMIN NODE_EXTRA SECTIONS INSTANCE_EXTRA
config() {
cat <<CONF
[node]
id = "$1"
region = "local"
threads = 1
roles = $2
$4
[admin]
listen = "127.0.0.1:$3"
[http]
access_log = ${ACCESS_LOG:-false}
$5
[[apps]]
name = "bench"
hostnames = ["127.0.0.1"]
# as bench/anyedge.sh: limits that never queue a request (C connections stay far below them)
concurrency = { type = "requests", soft_limit = 20000, hard_limit = 20000 }
limits = { max_connections = 20000, max_inflight = 20000 }
  [[apps.services]]
  ports = [ { port = $proxy, bind = "127.0.0.1", handlers = ["http"] } ]
  [[apps.instances]]
  id = "origin"
  region = "local"
  address = "127.0.0.1:$origin"
  $6
CONF
}
if [ "$BACKHAUL" = "1" ]; then
  "$ANYEDGE" certs cluster-ca --out "$work/pki" >/dev/null
  for id in cg-edge cg-worker; do "$ANYEDGE" certs node --ca "$work/pki" --id "$id" --out "$work/pki" >/dev/null; done
  cluster() { printf '[cluster]\nca = "%s/cluster-ca.pem"\ncert = "%s/%s.pem"\nkey = "%s/%s-key.pem"\n' "$work/pki" "$work/pki" "$1" "$work/pki" "$1"; }
  config cg-worker '["worker"]' "$worker_admin" "backhaul_listen = \"127.0.0.1:$backhaul\"" "$(cluster cg-worker)" "" > "$work/worker.toml"
  config cg-edge '["edge"]' "$admin" "" "$(cluster cg-edge)
[[nodes]]
id = \"cg-worker\"
region = \"local\"
advertise = \"127.0.0.1:$backhaul\"" 'node = "cg-worker"' > "$work/edge.toml"
else
  config cg-edge '["edge", "worker"]' "$admin" "" "" "" > "$work/edge.toml"
fi
run() {  # run N: serve N requests with callgrind on every anyedge process
  local n="$1" procs=()
  if [ "$BACKHAUL" = "1" ]; then
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.worker.$n" "$ANYEDGE" run --config "$work/worker.toml" 2>"$work/vg.worker.$n.log" &
    procs+=($!)
  fi
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.edge.$n" "$ANYEDGE" run --config "$work/edge.toml" 2>"$work/vg.edge.$n.log" &
  procs+=($!)
  pids+=("${procs[@]}")
  local ok=""
  for _ in $(seq 1 600); do curl -sf -m 5 "http://127.0.0.1:$proxy/ok" >/dev/null && { ok=1; break; }; sleep 0.2; done
  [ -n "$ok" ] || { echo "anyedge did not answer (logs: $work/vg.*.log)" >&2; tail -5 "$work"/vg.*."$n".log >&2; exit 1; }
  h2load "${proto[@]}" -n "$n" -c "$C" -t 1 "http://127.0.0.1:$proxy/ok" >"$work/h2load.$n.log"
  grep -q " 0 failed, 0 errored" "$work/h2load.$n.log" || grep "requests:" "$work/h2load.$n.log" >&2
  kill -TERM "${procs[@]}"; wait "${procs[@]}" || true
}
total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done { gsub(",", "", $1); print $1; done = 1 }'; }
per_request() { echo $(( ($(total "$work/cg.$1.$N2") - $(total "$work/cg.$1.$N1")) / (N2 - N1) )); }
run "$N1"; run "$N2"
edge="$(per_request edge)"
if [ "$BACKHAUL" = "1" ]; then
  worker="$(per_request worker)"
  echo "anyedge over backhaul: edge $edge + worker $worker = $(( edge + worker )) instructions per $kind request (callgrind, $C connections)"
else
  echo "anyedge: $edge instructions per $kind request (callgrind, $C connections)"
fi
# The profile of the larger run: the functions with the most instructions of their own.
for f in "$work"/cg.*."$N2"; do
  echo; echo "top functions of ${f##*/cg.} (self instructions, run of $N2 requests):"
  callgrind_annotate --threshold=90 "$f" 2>/dev/null | sed -n '/^Ir/,$p' | sed -n '3,25p' | cut -c1-160
done
