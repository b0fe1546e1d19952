#!/bin/bash
# What callers over --max-connections see: fanout with --max-connections 1000 behind 1,500 wrk connections for
# 10 s (/api/all?timeout=1000, simulator at 100-600 ms), status counts from wrk. (/api/within-timeout would
# answer the refused ones `200 []`, as it does every shed call.)
# Usage: bash bench/over_cap.sh [FANOUT_BINARY]   (default target/release/fanout; build it first)
# Loopback only; every process is stopped when the script exits.
set -eu
BIN=${1:-target/release/fanout}
ulimit -n 20000
D=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
cat > "$D/status.lua" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total, out = {}, "statuses:"
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do out = out .. " " .. k .. "=" .. v end
  print(out)
end
LUA
SP=$((20000 + RANDOM % 5000)); FP=$((25000 + RANDOM % 5000)); AP=$((10000 + RANDOM % 5000))
"$BIN" simulator --listen 127.0.0.1:$SP --write-ca "$D/ca.pem" > "$D/sim.log" 2>&1 &
sleep 0.5
"$BIN" --listen 127.0.0.1:$FP --admin-listen 127.0.0.1:$AP --max-connections 1000 \
    --upstream https://127.0.0.1:$SP/api/work --upstream-ca "$D/ca.pem" > /dev/null 2>&1 &
sleep 0.5
timeout 60 wrk -t2 -c1500 -d10s --timeout 5s --latency -s "$D/status.lua" \
    "http://127.0.0.1:$FP/api/all?timeout=1000"
