#!/usr/bin/env bash
# anyedge benchmark: anyedge side by side with HAProxy, nginx and a direct connection, on loopback.
#
#   bench/run.sh                                   # this issue's defaults: tcp_bulk + tcp_idle_mem, 5 reps
#   DURATION=3 REPS=1 bench/run.sh                 # smoke run
#   WITH_ANYEDGE=0 bench/run.sh                    # peers only (no build, no anyedge column)
#   ANYEDGE_BUILD=0 bench/run.sh                   # bench the binary that is already built
#   SCENARIOS=h1_small,tcp_bulk PROXY_TCP_ONLY=0 bench/run.sh   # once anyedge speaks HTTP
#   BACKHAUL=1 SCENARIOS=h1_small,tcp_bulk PROXY_TCP_ONLY=0 bench/run.sh  # + edge -> worker over backhaul
#
# Installs missing Debian packages, builds anyedge (release), runs bench.py with anyedge in the
# PROXY_CMD slot (bench/anyedge.sh), prints the Markdown report (also in bench/.run/<ts>/report.md;
# OUT=file copies it there). Other knobs: see bench/README.md and `python3 bench/bench.py --help`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

# --- tools (Debian packages) ---------------------------------------------------------------------
pkgs=()
for pair in nginx:nginx-light haproxy:haproxy wrk:wrk h2load:nghttp2-client iperf3:iperf3; do
  command -v "${pair%%:*}" >/dev/null || pkgs+=("${pair#*:}")
done
if command -v nginx >/dev/null && ! compgen -G "/usr/lib/nginx/modules/ngx_stream_module.so" >/dev/null; then
  pkgs+=(libnginx-mod-stream)
fi
if ((${#pkgs[@]})); then
  echo "[run.sh] installing: ${pkgs[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${pkgs[@]}" >&2 || { apt-get update -qq >&2 && apt-get install -y -qq "${pkgs[@]}" >&2; }
  # the packages' services are not needed (and must not hold our ports); policy-rc.d usually blocks them
fi
for t in nginx haproxy wrk h2load iperf3 taskset timeout python3; do
  command -v "$t" >/dev/null || { echo "[run.sh] missing $t" >&2; exit 1; }
done

# --- this issue's defaults ----------------------------------------------------------------------
export SCENARIOS="${SCENARIOS:-tcp_bulk,tcp_idle_mem}"
export REPS="${REPS:-5}"
export TCP_IDLE_N="${TCP_IDLE_N:-9000}"
# the machine is shared with builds: wait up to 10 min for it to be idle before measuring
export WAIT_QUIET="${WAIT_QUIET:-600}"

# --- anyedge -------------------------------------------------------------------------------------
if [ "${WITH_ANYEDGE:-1}" != "0" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/anyedge-target}"
  export ANYEDGE="${ANYEDGE:-$CARGO_TARGET_DIR/release/anyedge}"
  if [ "${ANYEDGE_BUILD:-1}" != "0" ]; then
    echo "[run.sh] cargo build --release -p anyedge (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)" >&2
    (cd "$repo" && cargo build --release -p anyedge) >&2
  fi
  [ -x "$ANYEDGE" ] || { echo "[run.sh] no anyedge binary at $ANYEDGE" >&2; exit 1; }
  rev="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo 'no commit')"
  dirty="$(git -C "$repo" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null | head -c1)"
  built="$(date -r "$ANYEDGE" '+%Y-%m-%d %H:%M')"
  newer="$(cd "$repo" && find crates Cargo.toml Cargo.lock -newer "$ANYEDGE" -type f 2>/dev/null | wc -l)"
  if [ "$newer" != "0" ]; then
    echo "[run.sh] warning: $newer source file(s) changed after $ANYEDGE was built" >&2
    built="$built; $newer source file(s) changed after that"
  fi
  # run a private copy: a rebuild during the run must not mix two versions across restarts
  mkdir -p "$here/.run/bin"
  rm -f "$here/.run/bin/anyedge."*
  snap="$here/.run/bin/anyedge.$$"
  cp "$ANYEDGE" "$snap"
  export ANYEDGE="$snap"
  export PROXY_VERSION="${PROXY_VERSION:-binary built $built, source ${rev}${dirty:+ (uncommitted changes)}, release profile}"
  export PROXY_NAME="${PROXY_NAME:-anyedge}"
  export PROXY_CMD="${PROXY_CMD:-$here/anyedge.sh}"
  # anyedge serves raw TCP only for now: no HTTP readiness check, HTTP scenarios n/a for it
  export PROXY_TCP_ONLY="${PROXY_TCP_ONLY:-1}"
  export TARGETS="${TARGETS:-direct,nginx,haproxy}"
  # BACKHAUL=1: also anyedge as an edge and a worker joined by backhaul, side by side
  if [ "${BACKHAUL:-0}" = "1" ]; then
    export PROXY2_NAME="${PROXY2_NAME:-anyedge-bh}"
    export PROXY2_CMD="${PROXY2_CMD:-ANYEDGE_BACKHAUL=1 $here/anyedge.sh}"
  fi
else
  unset PROXY_CMD
fi

# 9,000 idle proxied connections need descriptors; bench.py raises the limit further if it may
# (the hard limit here is 20,000 and cannot be raised: a proxy then holds 2 x 9,000 + listeners).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
# bench.py stops every process it started (by pid / own process group) on exit, on error and on
# SIGINT/SIGTERM/SIGHUP; exec so that signals reach it directly.
exec python3 "$here/bench.py" "$@"
