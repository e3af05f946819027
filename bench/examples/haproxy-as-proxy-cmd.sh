#!/usr/bin/env bash
# Example PROXY_CMD: a second HAProxy driven purely by the harness's PROXY_* env contract.
# It exists to show/test the plug-in slot; copy its shape for a real proxy:
#   PROXY_NAME=hap-copy PROXY_CMD="$PWD/bench/examples/haproxy-as-proxy-cmd.sh" bench/run.sh
# Must stay in the foreground (exec), the harness stops it with SIGTERM to its process group.
set -euo pipefail
: "${PROXY_LISTEN_HTTP:?run me from bench/run.sh}" "${PROXY_UPSTREAM_HTTP:?}" "${PROXY_WORKDIR:?}"
cfg="$PROXY_WORKDIR/haproxy.cfg"
cat > "$cfg" <<CFG
global
    nbthread ${PROXY_WORKERS:-1}
    maxconn ${PROXY_MAX_CONNS:-20000}
    ulimit-n ${PROXY_NOFILE:-20000}
    no strict-limits
defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
    http-reuse always
frontend fe
    bind ${PROXY_LISTEN_HTTP}
    bind ${PROXY_LISTEN_H2C} proto h2
    default_backend be
backend be
    server s1 ${PROXY_UPSTREAM_HTTP}
listen tcp_fwd
    mode tcp
    bind ${PROXY_LISTEN_TCP}
    server s1 ${PROXY_UPSTREAM_TCP}
listen tcp_idle
    mode tcp
    bind ${PROXY_LISTEN_TCP_IDLE}
    server s1 ${PROXY_UPSTREAM_TCP_IDLE}
CFG
exec haproxy -db -f "$cfg"
