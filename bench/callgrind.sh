#!/usr/bin/env bash
# Instructions per HTTP/1.1 keep-alive request through anyedge, counted by callgrind (repeatable,
# unlike time). Runs anyedge under valgrind in front of an nginx origin, sends N1 then N2 requests
# in two runs with h2load --h1, and reports (I(N2) - I(N1)) / (N2 - N1), so start-up cancels out.
#   bench/callgrind.sh                 # N1=2000 N2=12000
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/anyedge-target}"
ANYEDGE="${ANYEDGE:-$CARGO_TARGET_DIR/release/anyedge}"
N1="${N1:-2000}"; N2="${N2:-12000}"
for t in valgrind nginx h2load; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }; done
work="$(mktemp -d /tmp/anyedge-callgrind.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap 'cp "$work"/cg.* "$KEEP"/ 2>/dev/null; cleanup' EXIT
origin=18380; proxy=18381; admin=18382
mkdir -p "$work/origin"
cat > "$work/origin/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log stderr warn; pid $work/origin/nginx.pid;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$origin; location /ok { return 200 "ok"; } } }
CONF
nginx -p "$work/origin/" -c "$work/origin/nginx.conf" & pids+=($!)
cat > "$work/anyedge.toml" <<CONF
[node]
threads = 1
[admin]
listen = "127.0.0.1:$admin"
[http]
access_log = false
[[apps]]
name = "bench"
hostnames = ["127.0.0.1"]
  [[apps.services]]
  ports = [ { port = $proxy, bind = "127.0.0.1", handlers = ["http"] } ]
  [[apps.instances]]
  id = "origin"
  address = "127.0.0.1:$origin"
CONF
count() {  # count N: total instructions of an anyedge run that served N requests
  local n="$1" out="$work/cg.$1"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$ANYEDGE" run --config "$work/anyedge.toml" 2>"$work/vg.$n.log" &
  local vg=$!
  for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/$proxy) 2>/dev/null && break; sleep 0.1; done
  h2load --h1 -n "$n" -c 8 -t 1 "http://127.0.0.1:$proxy/ok" >"$work/h2load.$n.log"
  grep -q " 0 failed, 0 errored" "$work/h2load.$n.log" || grep "requests:" "$work/h2load.$n.log" >&2
  kill -TERM "$vg"; wait "$vg" || true
  callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done { gsub(",", "", $1); print $1; done = 1 }'
}
i1="$(count "$N1")"; i2="$(count "$N2")"
echo "anyedge: $(( (i2 - i1) / (N2 - N1) )) instructions per HTTP/1.1 keep-alive request (callgrind; I($N1)=$i1, I($N2)=$i2)"
# The profile of the larger run: the functions with the most instructions of their own.
echo; echo "top functions (self instructions, run of $N2 requests):"
callgrind_annotate --threshold=90 "$work/cg.$N2" 2>/dev/null | sed -n '/^Ir/,$p' | sed -n '3,30p' | cut -c1-160
