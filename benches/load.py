#!/usr/bin/env python3
"""End-to-end load bench: phigate beside the nginx peers, in one run, interleaved.

Targets (all on loopback; every HTTPS target is TLS with a P-256 certificate, HTTP/1.1 keep-alive):
  upstream        nginx static files, plain HTTP :18080 (the floor every proxy adds to)
  nginx_proxy     peer D  https://127.0.0.1:18443/patients/...        plain TLS reverse proxy
  nginx_lua_mask  peer D2 https://127.0.0.1:18443/masked/patients/... + bearer check + Lua/cjson masking
  phigate_pass    phigate, full-access caller (JWT verified, route permission, no masking)
  phigate_masked  phigate, anonymized caller (masked with the `bench` set: the peers' masking)
  phigate_example phigate, anonymized caller, masked with the example `patient` set of rules/fields.yaml
                  (pseudonyms, a removal, the detector backstop on every other string: more work than
                  the peers do), served by a second gateway process of the same binary
for 1 KB / 64 KB / 1 MB bodies at two concurrencies, several repetitions; medians are reported.
CPU us/request is the utime+stime of the proxy's own processes (nginx master+workers of the peer;
the phigate process) over the run divided by the requests wrk completed: contention distorts it least.

Usage: benches/load.sh [--smoke] [--reps N] [--duration S] [--conns 8,64] [--sizes small,medium,large]
"""
import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TOKEN_PEER = "bench-token-0123456789abcdef"
HZ = os.sysconf("SC_CLK_TCK")
SIZES = {"small": "1KB", "medium": "64KB", "large": "1MB"}
TARGETS = ["upstream", "nginx_proxy", "nginx_lua_mask", "phigate_pass", "phigate_masked", "phigate_example"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            if int(st[st.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(d))
    return out


def cpu_ticks(pids):
    t = 0
    for p in pids:
        try:
            st = open(f"/proc/{p}/stat").read()
        except OSError:
            continue
        f = st[st.rindex(")") + 2:].split()
        t += int(f[11]) + int(f[12])  # utime + stime
    return t


def status_kb(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def run_wrk(url, header, conns, duration, timeout_s=10):
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", f"--timeout={timeout_s}s",
           "-s", os.path.join(HERE, "wrk_report.lua")]
    if header:
        cmd += ["-H", header]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r"WRKJSON (\{.*\})", out)
    if not m:
        raise RuntimeError(f"wrk gave no result for {url}:\n{out}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def percentile(sorted_vals, p):
    if not sorted_vals:
        return 0
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def run_h2load_rate(url, header, rate, duration, clients=10):
    """Fixed request rate (open loop per client); latencies from h2load's per-request log."""
    logf = f"/tmp/phigate-load-h2load-{os.getpid()}.log"
    per = max(1, round(rate / clients))
    cmd = ["h2load", "--h1", "-c", str(clients), "--rps", str(per), "-D", str(duration),
           "--warm-up-time", "1", "--log-file", logf]
    if header:
        cmd += ["-H", header]
    cmd.append(url)
    subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    lat = sorted(int(l.split("\t")[2]) for l in open(logf) if l.count("\t") >= 2 and l.split("\t")[1] == "200")
    n_all = sum(1 for _ in open(logf))
    os.unlink(logf)
    return {"rate": per * clients, "ok": len(lat), "all": n_all, "p50": percentile(lat, 50),
            "p99": percentile(lat, 99), "p999": percentile(lat, 99.9)}


def run_h2load_h2(url, header, clients, streams, duration):
    """HTTP/2 closed loop: `clients` connections x `streams` concurrent streams for `duration` s."""
    logf = f"/tmp/phigate-load-h2-{os.getpid()}.log"
    # No warm-up period: h2load would leave its requests out of the count but not out of the
    # CPU time we measure around it.
    cmd = ["h2load", "-c", str(clients), "-m", str(streams), "-D", str(duration), "--log-file", logf]
    if header:
        cmd += ["-H", header]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    rows = [l.split("\t") for l in open(logf) if l.count("\t") >= 2]
    os.unlink(logf)
    lat = sorted(int(r[2]) for r in rows if r[1] == "200")
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    return {"requests": len(rows), "ok": len(lat), "rps": float(m.group(1)) if m else len(lat) / duration,
            "p50": percentile(lat, 50), "p99": percentile(lat, 99), "p999": percentile(lat, 99.9),
            "errors": len(rows) - len(lat), "non2xx": 0}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_us(us):
    if us is None:
        return "-"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} us"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="~5 s: 1 KB only, one concurrency, 1 s per target")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--conns", default="8,64")
    ap.add_argument("--sizes", default="small,medium,large")
    ap.add_argument("--gateway-bin", default=os.environ.get("BENCH_GATEWAY_BIN"))
    ap.add_argument("--peers", default=os.environ.get("BENCH_PEERS", os.path.join(REPO, "..", "shared", "bench-peers")))
    ap.add_argument("--out", default="/tmp/phigate-load")
    ap.add_argument("--audit", default="file", choices=["file", "discard"])
    ap.add_argument("--keep-audit", action="store_true",
                    help="keep the gateways' audit logs (a full run appends ~6 GB; removed by default)")
    ap.add_argument("--fields", default="bench", choices=["bench", "patient"],
                    help="the set phigate_masked masks with (phigate_example always masks with `patient`; "
                         "it is left out when this is `patient` too)")
    ap.add_argument("--no-extras", action="store_true", help="skip the half-peak latency and idle-connection runs")
    ap.add_argument("--placement", default="spread", choices=["spread", "pack"],
                    help="phigate's limits.worker_placement (how connections go to its workers)")
    a = ap.parse_args()
    global TARGETS
    if a.fields == "patient":
        TARGETS = [t for t in TARGETS if t != "phigate_example"]
    if a.smoke:
        a.reps, a.duration, a.conns, a.sizes, a.no_extras = 1, 1, "8", "small", True
    conns = [int(c) for c in a.conns.split(",")]
    sizes = a.sizes.split(",")
    os.makedirs(a.out, exist_ok=True)

    if not (port_open(18080) and port_open(18443)):
        log("starting the peers ...")
        subprocess.run(["bash", os.path.join(a.peers, "start_peers.sh")], check=True)
    pids = [int(l) for l in open("/tmp/bench-peers/pids").read().split()]
    upstream_master, tls_master = pids[0], pids[3]
    nginx_up = [upstream_master] + children(upstream_master)
    nginx_tls = [tls_master] + children(tls_master)

    gw_dir = os.path.join(a.out, "gateway")
    gw = subprocess.Popen([a.gateway_bin, "serve", "--dir", gw_dir, "--audit", a.audit, "--fields", a.fields,
                           "--placement", a.placement],
                          stdout=subprocess.PIPE, stderr=open(os.path.join(a.out, "gateway.stderr"), "w"), text=True)
    info = json.loads(gw.stdout.readline())
    gpid, gaddr = info["pid"], info["addr"]
    log(f"phigate pid {gpid} on {gaddr} (fields: {a.fields}, audit: {a.audit}, placement: {a.placement})")
    ex, einfo = None, None
    if "phigate_example" in TARGETS:
        ex = subprocess.Popen([a.gateway_bin, "serve", "--dir", gw_dir + "-example", "--audit", a.audit,
                               "--fields", "patient", "--placement", a.placement],
                              stdout=subprocess.PIPE, stderr=open(os.path.join(a.out, "gateway-example.stderr"), "w"),
                              text=True)
        einfo = json.loads(ex.stdout.readline())
        log(f"phigate (example patient set) pid {einfo['pid']} on {einfo['addr']}")
    bearer = lambda t: f"Authorization: Bearer {t}"
    spec = {
        "upstream": ("http://127.0.0.1:18080/patients/{f}.json", None, nginx_up),
        "nginx_proxy": ("https://127.0.0.1:18443/patients/{f}.json", None, nginx_tls),
        "nginx_lua_mask": ("https://127.0.0.1:18443/masked/patients/{f}.json", bearer(TOKEN_PEER), nginx_tls),
        "phigate_pass": ("https://" + gaddr + "/patients/{f}.json", bearer(info["token_full"]), [gpid]),
        "phigate_masked": ("https://" + gaddr + "/patients/{f}.json", bearer(info["token_anon"]), [gpid]),
    }
    if einfo:
        spec["phigate_example"] = ("https://" + einfo["addr"] + "/patients/{f}.json", bearer(einfo["token_anon"]),
                                   [einfo["pid"]])
    results = {}  # (target, size, conns) -> list of runs
    try:
        load1 = os.getloadavg()[0]
        # Warm-up: connection pools, caches, page cache.
        for t in TARGETS:
            url, h, _ = spec[t]
            for s in sizes:
                run_wrk(url.format(f=s), h, 4, 1)
        hwm = {}
        for rep in range(a.reps):
            for s in sizes:
                for c in conns:
                    for t in (TARGETS if rep % 2 == 0 else list(reversed(TARGETS))):
                        url, h, cpu_pids = spec[t]
                        c0, u0 = cpu_ticks(cpu_pids), cpu_ticks(nginx_up)
                        r = run_wrk(url.format(f=s), h, c, a.duration)
                        c1, u1 = cpu_ticks(cpu_pids), cpu_ticks(nginx_up)
                        n = max(1, r["requests"])
                        r["cpu_us"] = (c1 - c0) / HZ * 1e6 / n
                        r["upstream_cpu_us"] = (u1 - u0) / HZ * 1e6 / n
                        results.setdefault((t, s, c), []).append(r)
                        log(f"rep {rep + 1} {SIZES[s]:>4} c={c:<3} {t:<15} {r['rps']:9.0f} req/s  p50 {fmt_us(r['p50']):>9}"
                            f"  p99 {fmt_us(r['p99']):>9}  p99.9 {fmt_us(r['p999']):>9}  cpu {r['cpu_us']:7.0f} us/req"
                            f"  err {r['errors']} non2xx {r['non2xx']}")
                hwm[s] = max(status_kb(gpid, "VmHWM"), status_kb(einfo["pid"], "VmHWM") if einfo else 0)
        extras = {}
        if not a.no_extras and "small" in sizes:
            # Added p99 at half of peak load (1 KB): the same fixed request rate to the upstream alone
            # and through phigate (passthrough), open loop, per-request latencies from h2load.
            peak = max(med([r["rps"] for r in results[("phigate_pass", "small", c)]]) for c in conns)
            rate = int(peak / 2)
            half = {}
            for t in ["upstream", "phigate_pass", "nginx_proxy", "upstream", "phigate_pass", "nginx_proxy"]:
                url, h, _ = spec[t]
                half.setdefault(t, []).append(run_h2load_rate(url.format(f="small"), h, rate, max(5, a.duration)))
            extras["half_peak"] = {"peak_rps": peak, "rate": rate,
                                   **{t: {k: med([x[k] for x in v]) for k in v[0]} for t, v in half.items()}}
            # Mixed traffic: the same fixed 1 KB rate through phigate alone and beside two
            # connections fetching 1 MB masked bodies, which are masked off the workers (a
            # ~1 ms mask on a worker would hold up every connection it serves).
            if "large" in sizes:
                url, h, _ = spec["phigate_pass"]
                murl, mh, _ = spec["phigate_masked"]
                mixed = {}
                for rep in range(2):
                    for kind in (["alone", "beside"] if rep == 0 else ["beside", "alone"]):
                        bg = None
                        if kind == "beside":
                            bg = subprocess.Popen(["wrk", "-t1", "-c2", f"-d{max(5, a.duration) + 3}s", "-H", mh,
                                                   murl.format(f="large")], stdout=subprocess.PIPE, text=True)
                            time.sleep(1)
                        r = run_h2load_rate(url.format(f="small"), h, 4000, max(5, a.duration))
                        if bg:
                            out = bg.communicate()[0]
                            r["bg_rps"] = float(next((l.split()[1] for l in out.splitlines() if "Requests/sec" in l), 0))
                        mixed.setdefault(kind, []).append(r)
                        log(f"mixed rep {rep + 1} 1 KB at 4000/s {kind:<6} p50 {fmt_us(r['p50']):>9}  p99 {fmt_us(r['p99']):>9}"
                            + (f"  (1 MB masked {r['bg_rps']:.0f} req/s)" if bg else ""))
                extras["mixed"] = {k: {f: med([x[f] for x in v]) for f in v[0]} for k, v in mixed.items()}
            # HTTP/2 (h2load, 1 KB and 64 KB): peer D against phigate, same run.
            h2 = {}
            for rep in range(2):
                for s in [x for x in ("small", "medium") if x in sizes]:
                    for t in ["nginx_proxy", "phigate_pass", "phigate_masked", "nginx_lua_mask"]:
                        url, h, cpu_pids = spec[t]
                        c0 = cpu_ticks(cpu_pids)
                        r = run_h2load_h2(url.format(f=s), h, 8, 10, max(4, a.duration))
                        r["cpu_us"] = (cpu_ticks(cpu_pids) - c0) / HZ * 1e6 / max(1, r["ok"])
                        h2.setdefault(f"{t}/{s}", []).append(r)
                        log(f"h2 rep {rep + 1} {SIZES[s]:>4} {t:<15} {r['rps']:9.0f} req/s  p99 {fmt_us(r['p99']):>9}"
                            f"  cpu {r['cpu_us']:7.0f} us/req  errors {r['errors']}")
            extras["h2"] = {k: {f: med([x[f] for x in v]) for f in ("rps", "p50", "p99", "p999", "cpu_us", "errors")}
                            for k, v in h2.items()}
            # 1,000 idle keep-alive TLS connections, on a fresh gateway process (this one's heap
            # still holds what the masked 1 MB runs used).
            idle_gw = subprocess.Popen([a.gateway_bin, "serve", "--dir", gw_dir + "-idle", "--audit", a.audit],
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                iinfo = json.loads(idle_gw.stdout.readline())
                out = subprocess.run([a.gateway_bin, "idle", "--addr", iinfo["addr"], "--ca", iinfo["ca"], "--token",
                                      iinfo["token_full"], "--conns", "1000", "--hold", "3", "--pid", str(iinfo["pid"])],
                                     capture_output=True, text=True, timeout=120).stdout
                extras["idle"] = json.loads(out.strip().splitlines()[-1])
            finally:
                idle_gw.kill()
        extras["gateway_vmhwm_kb"] = max(status_kb(gpid, "VmHWM"), status_kb(einfo["pid"], "VmHWM") if einfo else 0)
        extras["gateway_vmhwm_kb_after_size"] = hwm
        extras["loadavg_start"] = load1
        extras["loadavg_end"] = os.getloadavg()[0]
    finally:
        for g in [gw] + ([ex] if ex else []):
            g.send_signal(signal.SIGTERM)
            try:
                g.wait(10)
            except subprocess.TimeoutExpired:
                g.kill()
        # The audit files are written for realism (the sink's cost is part of the figures), not
        # kept: a full run appends ~6 GB (appended to run after run, they reached 23 GB here).
        for d in (gw_dir, gw_dir + "-example", gw_dir + "-idle"):
            f = os.path.join(d, "audit.jsonl")
            if os.path.exists(f):
                log(f"audit log {f}: {os.path.getsize(f) / 2**20:.0f} MiB" + ("" if a.keep_audit else ", removed"))
                if not a.keep_audit:
                    os.remove(f)
    report(results, extras, sizes, conns, a)


def targets(ratios, extras, sizes):
    """The issue's targets, each checked against this run's ratios: met or missed, with the figures."""
    rows = []

    def check(name, values, ok):
        if values:
            figs = ", ".join(f"{k} {v:.2f}x" for k, v in values)
            rows.append(f"| {name} | {figs} | {'met' if all(ok(v) for _, v in values) else '**missed**'} |")

    def pick(size_keys, field):
        return [(k.replace("small", "1KB").replace("medium", "64KB").replace("large", "1MB").replace("/", " c="),
                 r[field]) for k, r in ratios.items() if k.split("/")[0] in size_keys and field in r]

    check("passthrough req/s >= peer D (1 KB, 64 KB)", pick(("small", "medium"), "pass_rps"), lambda v: v >= 1.0)
    check("passthrough p99 <= peer D (1 KB, 64 KB)", pick(("small", "medium"), "pass_p99"), lambda v: v <= 1.0)
    check("passthrough CPU/req <= peer D (1 KB, 64 KB)", pick(("small", "medium"), "pass_cpu"), lambda v: v <= 1.0)
    check("masked (`bench` set) req/s >= 4x peer D2 (64 KB, 1 MB)", pick(("medium", "large"), "masked_rps"),
          lambda v: v >= 4.0)
    check("masked (`bench` set) CPU/req <= 2.5x own passthrough (64 KB, 1 MB)",
          pick(("medium", "large"), "masked_over_pass_cpu"), lambda v: v <= 2.5)
    check("masked (example set) req/s >= 4x peer D2 (64 KB, 1 MB)", pick(("medium", "large"), "example_rps"),
          lambda v: v >= 4.0)
    check("masked (example set) CPU/req <= 2.5x own passthrough (64 KB, 1 MB)",
          pick(("medium", "large"), "example_over_pass_cpu"), lambda v: v <= 2.5)
    hp = extras.get("half_peak")
    if hp:
        added = hp["phigate_pass"]["p99"] - hp["upstream"]["p99"]
        rows.append(f"| added p99 over the upstream at half of peak < 1 ms (1 KB) | {fmt_us(added)} | "
                    f"{'met' if added < 1000 else '**missed**'} |")
    idle = extras.get("idle")
    if idle:
        mb = idle["gateway_rss_kb_held"] / 1024
        rows.append(f"| 1,000 idle keep-alive TLS connections < 64 MB RSS | {mb:.1f} MB | {'met' if mb < 64 else '**missed**'} |")
    if not rows:
        return []
    return ["", "## Against the targets (this run; ratios are phigate over the peer, or masked over passthrough)", "",
            "| target | figures | status |", "|---|---|---|"] + rows


def report(results, extras, sizes, conns, a):
    keys = ["rps", "p50", "p99", "p999", "cpu_us", "upstream_cpu_us", "errors", "non2xx"]
    m = {k: {f: med([r[f] for r in v]) for f in keys} for k, v in results.items()}
    lines = [f"## Load bench ({a.reps} reps x {a.duration} s per run, medians; wrk -t1, TLS HTTP/1.1 keep-alive)", "",
             "| body | conns | target | req/s | p50 | p99 | p99.9 | proxy CPU us/req | upstream CPU us/req | errors/non-2xx |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in sizes:
        for c in conns:
            for t in TARGETS:
                x = m.get((t, s, c))
                if not x:
                    continue
                cpu = "-" if t == "upstream" else f"{x['cpu_us']:.0f}"
                lines.append(f"| {SIZES[s]} | {c} | {t} | {x['rps']:.0f} | {fmt_us(x['p50'])} | {fmt_us(x['p99'])} | "
                             f"{fmt_us(x['p999'])} | {cpu} | {x['upstream_cpu_us']:.0f} | {x['errors']:.0f}/{x['non2xx']:.0f} |")
    lines += ["", "## Ratios (same run)", "",
              "| body | conns | pass/nginx_proxy req/s | pass/nginx_proxy p99 | pass/nginx_proxy CPU | masked/nginx_lua req/s | masked/pass CPU "
              "| example/nginx_lua req/s | example/pass CPU |",
              "|---|---|---|---|---|---|---|---|---|"]
    ratios = {}
    for s in sizes:
        for c in conns:
            p, d, mk, d2 = (m.get((t, s, c)) for t in ["phigate_pass", "nginx_proxy", "phigate_masked", "nginx_lua_mask"])
            if not (p and d and mk and d2):
                continue
            r = {"pass_rps": p["rps"] / d["rps"], "pass_p99": p["p99"] / max(1, d["p99"]),
                 "pass_cpu": p["cpu_us"] / max(1e-9, d["cpu_us"]), "masked_rps": mk["rps"] / d2["rps"],
                 "masked_over_pass_cpu": mk["cpu_us"] / max(1e-9, p["cpu_us"])}
            ex = m.get(("phigate_example", s, c))
            if ex:
                r["example_rps"] = ex["rps"] / d2["rps"]
                r["example_over_pass_cpu"] = ex["cpu_us"] / max(1e-9, p["cpu_us"])
            ratios[f"{s}/{c}"] = r
            exs = f"{r['example_rps']:.1f}x | {r['example_over_pass_cpu']:.2f}x" if ex else "- | -"
            lines.append(f"| {SIZES[s]} | {c} | {r['pass_rps']:.2f}x | {r['pass_p99']:.2f}x | {r['pass_cpu']:.2f}x | "
                         f"{r['masked_rps']:.1f}x | {r['masked_over_pass_cpu']:.2f}x | {exs} |")
    hp = extras.get("half_peak")
    if hp:
        lines += ["", f"## Half of peak load, 1 KB (peak phigate passthrough {hp['peak_rps']:.0f} req/s; fixed rate "
                  f"{hp['rate']} req/s, h2load --h1, 10 clients, open loop; medians of 2)", "",
                  "| target | p50 | p99 | p99.9 | ok/all |", "|---|---|---|---|---|"]
        for t in ["upstream", "nginx_proxy", "phigate_pass"]:
            x = hp[t]
            lines.append(f"| {t} | {fmt_us(x['p50'])} | {fmt_us(x['p99'])} | {fmt_us(x['p999'])} | {x['ok']:.0f}/{x['all']:.0f} |")
        lines.append(f"\nAdded p99 over the upstream alone: phigate {fmt_us(hp['phigate_pass']['p99'] - hp['upstream']['p99'])}, "
                     f"nginx proxy {fmt_us(hp['nginx_proxy']['p99'] - hp['upstream']['p99'])}")
    mx = extras.get("mixed")
    if mx:
        lines += ["", "## Mixed traffic, 1 KB passthrough at 4,000 req/s (h2load --h1, 10 clients, open loop; medians of 2)", "",
                  "| 1 KB requests | p50 | p99 | p99.9 | ok/all |", "|---|---|---|---|---|"]
        for k, label in (("alone", "alone"), ("beside", f"beside 2 connections of 1 MB masked ({mx['beside']['bg_rps']:.0f} req/s)")):
            x = mx[k]
            lines.append(f"| {label} | {fmt_us(x['p50'])} | {fmt_us(x['p99'])} | {fmt_us(x['p999'])} | {x['ok']:.0f}/{x['all']:.0f} |")
    h2 = extras.get("h2")
    if h2:
        lines += ["", "## HTTP/2 (h2load, 8 connections x 10 streams, TLS; medians of 2)", "",
                  "| body | target | req/s | p50 | p99 | p99.9 | proxy CPU us/req | errors |", "|---|---|---|---|---|---|---|---|"]
        for k, x in h2.items():
            t, s = k.split("/")
            lines.append(f"| {SIZES[s]} | {t} | {x['rps']:.0f} | {fmt_us(x['p50'])} | {fmt_us(x['p99'])} | "
                         f"{fmt_us(x['p999'])} | {x['cpu_us']:.0f} | {x['errors']:.0f} |")
    idle = extras.get("idle")
    if idle:
        lines.append(f"\n1,000 idle keep-alive TLS connections (fresh gateway process): {idle['conns_open']} open ({idle['failed']} failed); "
                     f"gateway RSS {idle['gateway_rss_kb_before'] / 1024:.1f} MB before, "
                     f"{idle['gateway_rss_kb_held'] / 1024:.1f} MB while held")
    lines += targets(ratios, extras, sizes)
    lines.append(f"\nGateway peak RSS (VmHWM): {extras['gateway_vmhwm_kb'] / 1024:.1f} MB "
                 f"(after each body size: {', '.join(f'{SIZES[k]} {v / 1024:.1f} MB' for k, v in extras['gateway_vmhwm_kb_after_size'].items())}); "
                 f"load average {extras['loadavg_start']:.2f} at start, {extras['loadavg_end']:.2f} at end")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"runs": {f"{t}/{s}/{c}": v for (t, s, c), v in results.items()}, "ratios": ratios,
                   "extras": extras}, f, indent=1)
    # Smoke/CI: fail if any target answered with errors or non-2xx.
    bad = [k for k, x in m.items() if x["errors"] or x["non2xx"]]
    if bad:
        log(f"FAILED: errors or non-2xx answers for {bad}")
        sys.exit(1)


if __name__ == "__main__":
    main()
