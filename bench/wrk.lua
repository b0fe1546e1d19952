-- wrk script for bench/run.py: counts responses by status and reports, as one JSON line, what
-- wrk's own text summary does not give exactly.
--
-- Output (stdout, one line): BENCH_JSON {...} with
--   requests, duration_us, bytes          wrk's summary (requests = completed responses)
--   errors {connect, read, write, status, timeout}
--   statuses {"200": n, ...}              every completed response, by status (from response())
--   window_calls                          responses completed within $BENCH_WINDOW_NS (below)
--   latency_us {min, max, mean, stdev}
--   percentiles [{p, us}]                 for each p in $BENCH_PERCENTILES (comma list)
--   at_most [{us, count}]                 number of samples <= us in wrk's histogram, for each
--                                         threshold in $BENCH_LATENCY_THRESHOLDS_US (comma list)
--
-- Not every response's own latency: wrk 4 corrects its histogram for coordinated omission before
-- done() sees it (stats_correct in wrk.c/stats.c). For every sample of at least twice the mean
-- interval per connection (run time / (responses / connections)) it adds synthetic samples at
-- n - I, n - 2I, ... down to I, so wherever fast and slow answers mix the histogram holds more
-- samples than responses and its percentiles and counts are of that corrected histogram. run.py
-- labels them so, and takes per-request latencies from oha instead (bench/README.md).
--
-- wrk keeps latencies in a histogram with one bucket per microsecond; `latency:percentile(p)`
-- returns the sample of rank round(p/100 * recorded + 0.5). Asking for p = 100 * (r - 0.5) /
-- recorded therefore returns exactly the r-th smallest sample, and a binary search over r gives
-- the count of samples at or below a threshold. (Iterating `latency(i)` instead would cost
-- a histogram scan per distinct value.) This needs the number of samples, which Lua cannot read;
-- summary.requests is the number of responses, so where the correction added samples the ranks
-- land on the wrong ones: another reason these counts are not per request.

-- The measurement window: responses completed between two CLOCK_MONOTONIC instants (ns, from
-- $BENCH_WINDOW_NS "from,to"), at which run.py also samples the server's CPU time and the
-- simulator's counters. Per-call figures over the window leave out the start (connections being
-- opened) and the end (calls cut off when wrk stops, whose upstream requests were already made).
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")
local function now_ns()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
   return tonumber(timespec.tv_sec) * 1e9 + tonumber(timespec.tv_nsec)
end
local window_from, window_to = string.match(os.getenv("BENCH_WINDOW_NS") or "", "^(%d+),(%d+)$")
window_from, window_to = tonumber(window_from), tonumber(window_to)

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   -- A global of each thread's own Lua state; done() reads it back with thread:get().
   statuses = {}
   in_window = 0
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if window_from then
      local t = now_ns()
      if t >= window_from and t < window_to then
         in_window = in_window + 1
      end
   end
end

-- The r-th smallest of `total` recorded latencies (1-based).
local function at_rank(latency, total, r)
   return latency:percentile(100.0 * (r - 0.5) / total)
end

-- The exact number of recorded latencies <= x microseconds.
local function count_at_most(latency, total, x)
   if total == 0 or at_rank(latency, total, 1) > x then
      return 0
   end
   if at_rank(latency, total, total) <= x then
      return total
   end
   local lo, hi = 1, total -- at_rank(lo) <= x < at_rank(hi)
   while hi - lo > 1 do
      local mid = math.floor((lo + hi) / 2)
      if at_rank(latency, total, mid) <= x then lo = mid else hi = mid end
   end
   return lo
end

local function encode(value)
   local kind = type(value)
   if kind == "table" then
      if #value > 0 then
         local parts = {}
         for _, v in ipairs(value) do table.insert(parts, encode(v)) end
         return "[" .. table.concat(parts, ",") .. "]"
      end
      local parts = {}
      for k, v in pairs(value) do
         table.insert(parts, string.format("%q:%s", tostring(k), encode(v)))
      end
      return "{" .. table.concat(parts, ",") .. "}"
   elseif kind == "number" then
      if value ~= value or value == math.huge or value == -math.huge then
         return "null"
      end
      return string.format("%.17g", value)
   elseif kind == "string" then
      return string.format("%q", value)
   elseif kind == "boolean" then
      return tostring(value)
   end
   return "null"
end

function done(summary, latency, requests)
   local merged = {}
   local window_calls = 0
   for _, thread in ipairs(threads) do
      window_calls = window_calls + (thread:get("in_window") or 0)
      local counts = thread:get("statuses") or {}
      for status, n in pairs(counts) do
         local key = tostring(math.floor(status))
         merged[key] = (merged[key] or 0) + n
      end
   end

   local recorded = summary.requests
   local at_most = {}
   local thresholds = os.getenv("BENCH_LATENCY_THRESHOLDS_US") or ""
   for us in string.gmatch(thresholds, "%d+") do
      local x = tonumber(us)
      table.insert(at_most, { us = x, count = count_at_most(latency, recorded, x) })
   end

   local percentiles = {}
   for p in string.gmatch(os.getenv("BENCH_PERCENTILES") or "", "[%d.]+") do
      table.insert(percentiles, { p = tonumber(p), us = latency:percentile(tonumber(p)) })
   end

   local out = {
      requests = summary.requests,
      duration_us = summary.duration,
      bytes = summary.bytes,
      errors = summary.errors,
      statuses = merged,
      window_calls = window_calls,
      latency_us = {
         min = recorded > 0 and latency.min or 0,
         max = latency.max,
         mean = latency.mean,
         stdev = latency.stdev,
      },
      percentiles = percentiles,
      at_most = at_most,
   }
   io.write("BENCH_JSON " .. encode(out) .. "\n")
end
