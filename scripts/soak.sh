#!/usr/bin/env bash
# Bounded soak of phigate (not in CI): a release build of `phigate demo` (gateway + sample
# API on loopback) under wrk at ~80% of its measured peak, with a mixed load of
# passthrough (DPO, full data), masked (anonymized caller) and denied (403, 401) requests,
# while the rules are changed every few seconds (each change is a live reload).
#
#   scripts/soak.sh [DURATION_S=600] [OUT=benches/SOAK.md]
#
# Records: requests, statuses, socket errors, unexpected responses, reloads, RSS and open
# file descriptors of the gateway process every 10 s; growth is measured after warm-up
# (the first 60 s, or a tenth of the run when shorter).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-600}"
OUT="${2:-benches/SOAK.md}"
THREADS=1
CONNS=32
PORT="${PHIGATE_SOAK_PORT:-28443}"
ADMIN="${PHIGATE_SOAK_ADMIN_PORT:-29901}"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --quiet --release --locked
WORK="$(mktemp -d)"
cp -r rules "$WORK/rules"
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
export PHIGATE_PSEUDONYM_KEY=soak-pseudonym-key
./target/release/phigate demo --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" \
  --rules "$WORK/rules" --certs "$WORK/certs" >"$WORK/demo.out" 2>"$WORK/demo.err" &
PID=$!
for _ in $(seq 1 100); do grep -q TOKEN_MIA "$WORK/demo.out" 2>/dev/null && break; sleep 0.1; done
# shellcheck disable=SC1090
source <(grep -E '^\s*export TOKEN_' "$WORK/demo.out" | sed 's/^ *//')
BASE="https://127.0.0.1:$PORT"

# Round-robin mix per thread: expected status by kind, anything else is unexpected.
cat >"$WORK/mix.lua" <<LUA
local reqs = {
  { "/api/patients",   "$TOKEN_DANA", 200 },  -- passthrough, DPO
  { "/api/patients/1", "$TOKEN_ALEX", 200 },  -- passthrough, full access
  { "/api/patients",   "$TOKEN_BOB",  200 },  -- masked, anonymized
  { "/api/maps/3/embed", "$TOKEN_MIA", 200 }, -- passthrough, non-PHI
  { "/api/patients",   "$TOKEN_MIA",  403 },  -- denied, no permission
  { "/api/patients/1", "$TOKEN_BOB",  403 },  -- denied, inline deny
  { "/api/patients",   nil,           401 },  -- denied, no token
}
local i = 0
local delay_ms = tonumber(os.getenv("SOAK_DELAY_MS") or "0")
c200, c401, c403, cother = 0, 0, 0, 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function request()
  i = i % #reqs + 1
  local r = reqs[i]
  local h = {}
  if r[2] then h["Authorization"] = "Bearer " .. r[2] end
  return wrk.format("GET", r[1], h)
end
function delay() return delay_ms end
function response(status, headers, body)
  if status == 200 then c200 = c200 + 1
  elseif status == 401 then c401 = c401 + 1
  elseif status == 403 then c403 = c403 + 1
  else cother = cother + 1 end
end
function done(summary, latency, requests)
  local a, b, c, d = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("c200"); b = b + t:get("c401"); c = c + t:get("c403"); d = d + t:get("cother")
  end
  local s = summary
  io.write(string.format("RESULT requests=%d s200=%d s401=%d s403=%d sother=%d errors_connect=%d errors_read=%d errors_write=%d errors_timeout=%d p50_ms=%.2f p99_ms=%.2f\n",
    s.requests, a, b, c, d, s.errors.connect, s.errors.read, s.errors.write, s.errors.timeout,
    latency:percentile(50)/1000, latency:percentile(99)/1000))
end
LUA

echo "== peak: 20 s unthrottled"
wrk -t"$THREADS" -c"$CONNS" -d20s -s "$WORK/mix.lua" "$BASE" >"$WORK/peak.txt" 2>&1
PEAK=$(awk '/Requests\/sec/ {print $2}' "$WORK/peak.txt")
TARGET=$(python3 -c "print(int(float('$PEAK') * 0.8))")
# Each connection waits DELAY ms between requests: CONNS / (DELAY + latency) ~= TARGET.
LAT_MS=$(python3 -c "print(max(0.0, $CONNS * 1000.0 / float('$PEAK')))")
DELAY=$(python3 -c "print(max(1, round($CONNS * 1000.0 / $TARGET - $LAT_MS)))")
echo "peak ${PEAK} req/s -> target ${TARGET} req/s (delay ${DELAY} ms per connection)"

# Rules reloads: a comment line changes every 3 s (the watcher reloads it).
( n=0; while kill -0 "$PID" 2>/dev/null; do
    n=$((n+1)); sed -i "1s/.*/# soak edit $n/" "$WORK/rules/routes.yaml"; sleep 3
  done ) &
EDITOR_PID=$!
# RSS and fds every 10 s.
( while kill -0 "$PID" 2>/dev/null; do
    echo "$(date +%s) $(awk '/VmRSS/ {print $2}' /proc/$PID/status) $(ls /proc/$PID/fd | wc -l)"
    sleep 10
  done ) >"$WORK/samples.txt" &
SAMPLER_PID=$!
START=$(date +%s)
SOAK_DELAY_MS=$DELAY wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 10s -s "$WORK/mix.lua" "$BASE" \
  >"$WORK/soak.txt" 2>&1
END=$(date +%s)
kill "$EDITOR_PID" "$SAMPLER_PID" 2>/dev/null || true
wait "$EDITOR_PID" "$SAMPLER_PID" 2>/dev/null || true
METRICS=$(curl -s "http://127.0.0.1:$ADMIN/metrics" || true)

python3 - "$WORK" "$OUT" "$DURATION" "$PEAK" "$TARGET" "$START" "$END" <<'PY'
import re, sys, datetime
work, out, duration, peak, target, start, end = sys.argv[1:8]
soak = open(f"{work}/soak.txt").read()
r = dict(re.findall(r"(\w+)=([\d.]+)", soak.split("RESULT", 1)[1])) if "RESULT" in soak else {}
rps = re.search(r"Requests/sec:\s+([\d.]+)", soak)
samples = [tuple(map(int, l.split())) for l in open(f"{work}/samples.txt") if len(l.split()) == 3]
t0 = samples[0][0]
warm = min(60, int(duration) // 10)
after = [s for s in samples if s[0] - t0 >= warm] or samples
rss0, rss1 = after[0][1], after[-1][1]
fd0, fd1 = after[0][2], after[-1][2]
rss_max = max(s[1] for s in after)
requests = int(r.get("requests", 0))
errors = sum(int(r.get(k, 0)) for k in ("errors_connect", "errors_read", "errors_write", "errors_timeout"))
s200, s401, s403, sother = (int(r.get(k, 0)) for k in ("s200", "s401", "s403", "sother"))
# Each status must be its kind's share of the round-robin mix (4/7, 1/7, 2/7), within one
# round per connection; any other status is unexpected.
slack = 32 * 7
shares_ok = all(abs(n - requests * k / 7) <= slack for n, k in ((s200, 4), (s401, 1), (s403, 2)))
unexpected = sother + (0 if shares_ok else 1)
reloads = open(f"{work}/demo.out").read().count('"rules_reload"')
lines = [
    f"# Soak ({datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, `scripts/soak.sh {duration}`)",
    "",
    "Release build of `phigate demo` (gateway and sample API in one process) on loopback, 2 cores;",
    "wrk, 1 thread, 32 connections over HTTP/1.1 + TLS; mix per round: 4 x 200 (2 passthrough",
    "PHI, 1 masked, 1 passthrough non-PHI), 2 x 403, 1 x 401; `routes.yaml` edited every 3 s.",
    "",
    "| figure | value |",
    "|---|---|",
    f"| peak (20 s, unthrottled) | {float(peak):.0f} req/s |",
    f"| target (80% of peak) | {target} req/s |",
    f"| achieved over the soak | {float(rps.group(1)) if rps else 0:.0f} req/s |",
    f"| duration | {int(end) - int(start)} s |",
    f"| requests | {requests} |",
    f"| latency p50 / p99 | {r.get('p50_ms', '?')} ms / {r.get('p99_ms', '?')} ms |",
    f"| socket errors (connect/read/write/timeout) | {errors} |",
    f"| statuses 200 / 401 / 403 / other | {s200} / {s401} / {s403} / {sother} (shares as the mix: {'yes' if shares_ok else 'NO'}) |",
    f"| unexpected responses | {sother} |",
    f"| rules reloads during the soak (audit records) | {reloads} |",
    f"| RSS after warm-up ({warm} s) -> end (max) | {rss0} KiB -> {rss1} KiB ({rss_max} KiB); growth {100.0*(rss1-rss0)/rss0:+.1f}% |",
    f"| open fds after warm-up -> end | {fd0} -> {fd1} |",
    "",
    "RSS/fd samples (every 10 s): " + ", ".join(f"{s[1]//1024}M/{s[2]}" for s in samples),
    "",
]
verdict = errors == 0 and unexpected == 0 and (rss1 - rss0) <= 0.05 * rss0 and fd1 <= fd0
lines.append("Verdict: " + ("PASS (zero unexpected errors, RSS growth under 5%, no fd growth)" if verdict else "FAIL"))
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(0 if verdict else 1)
PY
