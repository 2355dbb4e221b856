#!/usr/bin/env bash
# End-to-end load bench: phigate beside nginx (plain proxy and Lua masking) over TLS, HTTP/1.1
# keep-alive, with wrk (and h2load for the fixed-rate latency run). Not part of the test suite.
#   bash benches/load.sh            # full run (~13 minutes): 3 reps x 6 targets x 3 sizes x 2 concurrencies
#   bash benches/load.sh --smoke    # ~5 s of load, for CI
#   bash benches/load.sh --help     # all options (reps, duration, conns, sizes, audit sink, field set)
# Needs the peers of ../shared/bench-peers (started here if not running; that installs nginx,
# wrk, h2load from Debian). Results: stdout and /tmp/phigate-load/results.{md,json}.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
(cd "$REPO" && cargo build --release --quiet --example bench_gateway)
export BENCH_GATEWAY_BIN="$CARGO_TARGET_DIR/release/examples/bench_gateway"
exec python3 "$HERE/load.py" "$@"
