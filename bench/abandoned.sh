#!/bin/bash
# Callers who leave: a TLS simulator answering every request after 20 s, 5 callers of
# /api/all?timeout=30000 that give up after 1 s (curl --max-time 1). One second after they left: the
# upstream requests still in flight at the simulator, fanout's active pool connections and its access
# lines, then how long SIGTERM takes. The same for the axum + reqwest peer, if it is built
# (python3 bench/run.py builds it into target/peers).
# Usage: bash bench/abandoned.sh [FANOUT_BINARY]   (default target/release/fanout; build it first; the
# simulator is always target/release/fanout's, which counts requests in flight)
# Loopback only; every process is stopped when the script exits.
set -eu
SIM=target/release/fanout
BIN=${1:-$SIM}
PEER=target/peers/release/peer-axum
D=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
SP=$((20000 + RANDOM % 5000)); FP=$((25000 + RANDOM % 5000)); AP=$((10000 + RANDOM % 5000))
"$SIM" simulator --listen 127.0.0.1:$SP --latency-ms 20000 --write-ca "$D/ca.pem" > "$D/sim.log" 2>&1 &
sleep 0.5
in_flight() { curl -s --cacert "$D/ca.pem" "https://localhost:$SP/stats" | sed 's/.*"in_flight": \([0-9]*\).*/\1/'; }

for impl in fanout peer; do
  if [ $impl = fanout ]; then
    "$BIN" --listen 127.0.0.1:$FP --admin-listen 127.0.0.1:$AP \
      --upstream https://localhost:$SP/api/work --upstream-ca "$D/ca.pem" > "$D/$impl.log" 2>&1 &
  elif [ -x "$PEER" ]; then
    "$PEER" --listen 127.0.0.1:$FP --upstream https://localhost:$SP --ca "$D/ca.pem" > "$D/$impl.log" 2>&1 &
  else
    echo "peer: not built ($PEER)"; continue
  fi
  SERVER=$!
  sleep 0.5
  for _ in 1 2 3 4 5; do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$FP/api/all?timeout=30000" &
  done
  wait $(jobs -p | grep -v "^$SERVER$" | tail -n 5) 2>/dev/null || true
  sleep 1
  echo "$impl: one second after the callers left: $(in_flight) upstream requests in flight at the simulator"
  if [ $impl = fanout ]; then
    curl -s "http://127.0.0.1:$AP/metrics" | grep '^fanout_upstream_pool_connections{state="active"}' | sed "s/^/$impl: /"
    grep '"event":"access"' "$D/$impl.log" | sed 's/.*"status":\([0-9]*\),"duration_ms":\([0-9.]*\).*/\1 \2/' |
      awk -v impl=$impl '{ n[$1]++; if (!($1 in lo) || $2 < lo[$1]) lo[$1] = $2; if ($2 > hi[$1]) hi[$1] = $2 }
        END { for (s in n) printf "%s: access lines: %d x %s after %.0f-%.0f ms\n", impl, n[s], s, lo[s], hi[s] }'
  fi
  t0=$(date +%s.%N)
  kill -TERM $SERVER
  wait $SERVER || true
  echo "$impl: SIGTERM to exit: $(echo "$(date +%s.%N) - $t0" | bc) s"
  for _ in $(seq 50); do [ "$(in_flight)" = 0 ] && break; sleep 0.1; done
done
