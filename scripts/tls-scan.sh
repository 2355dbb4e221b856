#!/usr/bin/env bash
# TLS scan of a running phigate with Debian's testssl.sh (apt-get install testssl.sh).
#
#   scripts/tls-scan.sh [OUT_DIR]
#
# Builds phigate, starts `phigate demo` on loopback with fresh development certificates,
# runs a full testssl scan against it and fails when:
#   - a protocol below TLS 1.2 (SSLv2, SSLv3, TLS 1.0, TLS 1.1) is offered,
#   - any finding about the gateway's TLS configuration is MEDIUM, HIGH or CRITICAL
#     (protocols, ciphers, preferences, vulnerabilities, server defaults, HTTP headers).
# Findings about how the certificate was issued (trust chain of the throwaway dev CA,
# CRL/OCSP URIs, CT, CAA) depend on the CA an operator deploys, not on phigate; they are
# listed separately and do not fail the scan. Results: OUT_DIR/testssl.json, .log, summary.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/tls-scan}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
TESTSSL="$(command -v testssl || command -v testssl.sh || true)"
if [ -z "$TESTSSL" ]; then
  apt-get update -qq && apt-get install -y -qq testssl.sh >/dev/null
  TESTSSL="$(command -v testssl || command -v testssl.sh)"
fi
# A debug build serves the same TLS configuration and builds faster.
cargo build --quiet --locked
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT="${PHIGATE_SCAN_PORT:-$(free_port)}"
ADMIN="${PHIGATE_SCAN_ADMIN_PORT:-$(free_port)}"
CERTS="$(mktemp -d)"
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$CERTS"' EXIT
"${CARGO_TARGET_DIR:-target}/debug/phigate" demo --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" \
  --certs "$CERTS" >"$OUT/gateway.log" 2>&1 &
PID=$!
for _ in $(seq 1 300); do
  if grep -q "export TOKEN_" "$OUT/gateway.log" 2>/dev/null; then break; fi
  kill -0 "$PID" 2>/dev/null || { cat "$OUT/gateway.log"; echo "phigate demo did not start"; exit 1; }
  sleep 0.1
done
rm -f "$OUT/testssl.json" "$OUT/testssl.log"
# --add-ca: trust the demo's CA, so chain findings are about phigate, not a stranger's cert.
"$TESTSSL" --quiet --color 0 --warnings off --sneaky --add-ca "$CERTS/ca.pem" \
  --jsonfile "$OUT/testssl.json" --logfile "$OUT/testssl.log" \
  "127.0.0.1:$PORT" >/dev/null 2>&1 || true
[ -s "$OUT/testssl.json" ] || { echo "testssl produced no results"; exit 1; }
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
findings = json.load(open(f"{out}/testssl.json"))
if isinstance(findings, dict):
    findings = findings.get("scanResult", findings)
cert_ids = ("cert", "intermediate_cert", "chain_of_trust", "OCSP", "crl", "CT", "DNS_CAArecord",
            "certificate_transparency", "OCSP_stapling", "must_staple")
bad, cert_notes, protos = [], [], {}
for f in findings:
    fid, sev, text = f.get("id", ""), f.get("severity", ""), f.get("finding", "")
    if fid in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"):
        protos[fid] = text
    if sev not in ("MEDIUM", "HIGH", "CRITICAL"):
        continue
    if any(fid.startswith(c) for c in cert_ids):
        cert_notes.append(f"{sev:8} {fid}: {text}")
    else:
        bad.append(f"{sev:8} {fid}: {text}")
fatal = [f for f in findings if f.get("severity") == "FATAL"]
if fatal or "TLS1_2" not in protos:
    print("FAIL: the scan did not complete:", fatal); sys.exit(1)
legacy = [p for p in ("SSLv2", "SSLv3", "TLS1", "TLS1_1") if "not offered" not in protos.get(p, "not offered")]
lines = ["protocols:"] + [f"  {k}: {v}" for k, v in protos.items()]
lines += ["gateway findings MEDIUM or worse: " + (str(len(bad)) if bad else "none")] + [f"  {b}" for b in bad]
lines += ["certificate-issuance findings (dev CA; not gating):"] + [f"  {c}" for c in cert_notes or ["none"]]
sev = {}
for f in findings:
    sev[f.get("severity", "?")] = sev.get(f.get("severity", "?"), 0) + 1
lines.append("all findings by severity: " + ", ".join(f"{k} {v}" for k, v in sorted(sev.items())))
text = "\n".join(lines)
open(f"{out}/summary.txt", "w").write(text + "\n")
print(text)
if legacy:
    print("FAIL: legacy protocols offered:", legacy); sys.exit(1)
if bad:
    print("FAIL: findings of medium severity or worse"); sys.exit(1)
print("OK: TLS 1.2+ only, no weak cipher, no gateway finding of medium severity or worse")
PY
