"""Turns a bench/bench.py result file into docs/benchmarks.md and docs/benchmarks.svg
(smoke runs go to bench/results/smoke.md instead, so docs only ever show full runs).

Usage: python3 bench/report.py bench/results/latest.json
"""

import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = {
    "rps_c64": ("req/s c64, keep-alive, 100-byte body", "≥ 0.50× direct (≥ the nginx one-hop proxy)"),
    "p50_c1": ("added p50 latency at c1", "≤ +35 µs over direct"),
    "rps_close": ("req/s with a new visitor connection per request", "≥ 0.60× direct"),
    "download": ("large download", "≥ 0.66× direct, RSS growth < 32 MiB"),
    "upload": ("large upload", "≥ 0.66× direct, RSS growth < 32 MiB"),
}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main(path):
    data = json.load(open(path))
    rows = data["results"]
    paths = []
    for r in rows:
        if r["path"] not in paths:
            paths.append(r["path"])
    rounds = sorted({r["round"] for r in rows})
    by = {(r["round"], r["path"]): r for r in rows}

    def ratio(metric, path, ref="direct"):
        vals = []
        for rd in rounds:
            d, p = by.get((rd, ref)), by.get((rd, path))
            if d and p and metric(p) is not None:
                vals.append(metric(p) / metric(d) if metric(d) else None)
        return med(vals)

    def h2(r):
        return r["h2"]["rps"] if "h2" in r else None

    def added(metric, path, ref="direct"):
        vals = []
        for rd in rounds:
            d, p = by.get((rd, ref)), by.get((rd, path))
            if d and p and metric(p) is not None and metric(d) is not None:
                vals.append(metric(p) - metric(d))
        return med(vals)

    def absolute(metric, path):
        return med([metric(by[(rd, path)]) for rd in rounds if (rd, path) in by])

    def num(x):
        return "n/a" if x is None else f"{x:.0f}"

    lines = []
    w = lines.append
    w("# Benchmarks")
    w("")
    w("Written by `bench/run.sh` (bench/bench.py + bench/report.py) from "
      f"`{os.path.relpath(path, ROOT)}`; do not edit by hand. Method: ../shared/benchmarks.md — every figure is a "
      "ratio to `direct` (load generator → nginx backend) **measured in the same round**, rounds interleave the "
      f"paths, and the table shows medians of {len(rounds)} round(s).")
    w("")
    w(f"- Run: {data['when']}; {len(rounds)} round(s) of {data['duration_s']} s per wrk run; "
      f"download/upload of {data['big_bytes'] >> 20} MiB with curl.")
    m = data["machine"]
    w(f"- Machine: {m['cpus']} CPUs, {m['mem_gib']} GiB, Linux {m['kernel']}; load generator, backend, relay and "
      "connector share the CPUs.")
    v = data["versions"]
    w(f"- Versions: {v['relay']}; {v['nginx']}; {v['wrk']}.")
    w("- Paths: `direct` = wrk/curl → nginx; `nginx` = nginx one-hop L7 proxy (HTTP/1.1 upstream keep-alive, the "
      "anchor); `relay-quic` = visitor → relay plain-HTTP ingress → QUIC session → connector → nginx; `relay-tcp` = the "
      "same over a TLS-over-TCP session (the fallback transport, `--transport tcp`); `cluster-same` = visitor → relay "
      "node B (one of two nodes sharing a PostgreSQL) → QUIC session → connector → nginx; `cluster-cross` = visitor → "
      "node A, which holds no session of the tenant → node link (QUIC) → node B → connector → nginx. Connectors "
      "keep their default 2 sessions. Uploads go "
      "to a small sink (bench/sink.py) on every path.")
    w("")
    w("## Ratios to direct (medians)")
    w("")
    w("| path | req/s c64 | added p50 at c1 | req/s Connection: close | HTTPS + HTTP/2 req/s | download | upload |")
    w("|---|---|---|---|---|---|---|")
    fmt = lambda x, suffix="×": "n/a" if x is None else f"{x:.2f}{suffix}"
    for p in paths:
        if p == "direct":
            continue
        w(f"| {p} | {fmt(ratio(lambda r: r['c64']['rps'], p))} | "
          f"{fmt(added(lambda r: r['c1']['p50_us'], p), ' µs')} | "
          f"{fmt(ratio(lambda r: r['close']['rps'], p))} | {fmt(ratio(h2, p))} | "
          f"{fmt(ratio(lambda r: r['download_mib_s'], p))} | {fmt(ratio(lambda r: r['upload_mib_s'], p))} |")
    w("")
    w("## Absolute figures (medians; they drift with the machine, the ratios are what count)")
    w("")
    w("| path | req/s c64 | p50 / p99 c64 (µs) | p50 c1 (µs) | req/s close | HTTPS + HTTP/2 req/s | download MiB/s | upload MiB/s | errors |")
    w("|---|---|---|---|---|---|---|---|---|")
    for p in paths:
        errs = sum(by[(rd, p)][k]["errors"] for rd in rounds for k in ("c64", "c1", "close", "h2")
                   if (rd, p) in by and k in by[(rd, p)])
        w(f"| {p} | {absolute(lambda r: r['c64']['rps'], p):.0f} | "
          f"{absolute(lambda r: r['c64']['p50_us'], p):.0f} / {absolute(lambda r: r['c64']['p99_us'], p):.0f} | "
          f"{absolute(lambda r: r['c1']['p50_us'], p):.0f} | {absolute(lambda r: r['close']['rps'], p):.0f} | "
          f"{num(med([h2(by[(rd, p)]) for rd in rounds if (rd, p) in by and h2(by[(rd, p)]) is not None]))} | "
          f"{absolute(lambda r: r['download_mib_s'], p):.0f} | {absolute(lambda r: r['upload_mib_s'], p):.0f} | {errs} |")
    w("")
    if "cluster-cross" in paths and "cluster-same" in paths:
        w("## Cluster: cross-node forwarding")
        w("")
        w("Ratios of `cluster-cross` to `cluster-same` in the same rounds (medians): what the extra node hop costs.")
        w("")
        w("| figure | target | measured |")
        w("|---|---|---|")
        c64 = ratio(lambda r: r["c64"]["rps"], "cluster-cross", "cluster-same")
        p50 = added(lambda r: r["c1"]["p50_us"], "cluster-cross", "cluster-same")
        w(f"| req/s c64, keep-alive | ≥ 0.85× same-node | {fmt(c64)} |")
        w(f"| added p50 latency at c1 | ≤ +60 µs over same-node | {fmt(p50, ' µs')} |")
        w(f"| req/s Connection: close | — | {fmt(ratio(lambda r: r['close']['rps'], 'cluster-cross', 'cluster-same'))} |")
        w(f"| large download | — | {fmt(ratio(lambda r: r['download_mib_s'], 'cluster-cross', 'cluster-same'))} |")
        w(f"| large upload | — | {fmt(ratio(lambda r: r['upload_mib_s'], 'cluster-cross', 'cluster-same'))} |")
        w("")
    w("## Memory")
    w("")
    for path in ("relay-quic", "relay-tcp", "cluster-cross"):
        rq = [by[(rd, path)] for rd in rounds if (rd, path) in by]
        if rq:
            relay_growth = max(r["relay_rss_kib"]["peak"] - r["relay_rss_kib"]["base"] for r in rq)
            conn_growth = max(r["connector_rss_kib"]["peak"] - r["connector_rss_kib"]["base"] for r in rq)
            w(f"- Largest RSS growth during one round of `{path}` (all tests, including the "
              f"{data['big_bytes'] >> 20} MiB transfers): relay {relay_growth / 1024:.1f} MiB "
              f"(from {rq[0]['relay_rss_kib']['base'] / 1024:.1f} MiB), connector {conn_growth / 1024:.1f} MiB "
              f"(from {rq[0]['connector_rss_kib']['base'] / 1024:.1f} MiB).")
    idle = data.get("idle_kib_per_connection", {})
    if "relay" in idle:
        w(f"- Relay memory per idle visitor keep-alive connection (1000 held on the plain-HTTP ingress): "
          f"{idle['relay']:.1f} KiB.")
    w("")
    w("## Against the targets")
    w("")
    w("| figure | target | measured |")
    w("|---|---|---|")
    w(f"| {TARGETS['rps_c64'][0]} | {TARGETS['rps_c64'][1]} | {fmt(ratio(lambda r: r['c64']['rps'], 'relay-quic'))} |")
    w(f"| {TARGETS['p50_c1'][0]} | {TARGETS['p50_c1'][1]} | {fmt(added(lambda r: r['c1']['p50_us'], 'relay-quic'), ' µs')} |")
    w(f"| {TARGETS['rps_close'][0]} | {TARGETS['rps_close'][1]} | {fmt(ratio(lambda r: r['close']['rps'], 'relay-quic'))} |")
    w(f"| {TARGETS['download'][0]} | {TARGETS['download'][1]} | {fmt(ratio(lambda r: r['download_mib_s'], 'relay-quic'))} |")
    w(f"| {TARGETS['upload'][0]} | {TARGETS['upload'][1]} | {fmt(ratio(lambda r: r['upload_mib_s'], 'relay-quic'))} |")
    if "relay" in idle:
        w(f"| memory per idle visitor keep-alive connection | ≤ 4 KiB | {idle['relay']:.1f} KiB |")
    sessions_path = os.path.join(ROOT, "bench", "results", "sessions.json")
    sessions = json.load(open(sessions_path)) if os.path.exists(sessions_path) else None
    if sessions:
        n = sessions["sessions"]
        w(f"| memory per idle connector session (relay side) | ≤ 64 KiB; 10,000 sessions ≤ 1 GiB RSS | "
          f"{sessions['relay_kib_per_session']:.1f} KiB; {n:,} sessions: "
          f"{sessions['relay_rss_loaded_kib'] / 1024:.0f} MiB RSS |")
        w(f"| reconnect storm: {n:,} connectors after a relay restart | all back ≤ 60 s, RSS bounded, no errors | "
          f"all back in {sessions['all_back_s']:.1f} s; peak RSS {sessions['storm_peak_rss_kib'] / 1024:.0f} MiB |")
    w("")
    if sessions:
        w("## Connector sessions (bench/sessions.py)")
        w("")
        w(f"- Run: {sessions['when']}. `session-sim run` (bench/session-sim) held {sessions['sessions']:,} "
          f"authenticated QUIC sessions for {sessions['tenants']} tenants from one process and one UDP socket "
          f"on loopback; they came up in {sessions['ramp_s']:.1f} s (each starts at a random point in the "
          f"first second).")
        w(f"- Relay RSS: {sessions['relay_rss_idle_kib'] / 1024:.1f} MiB before, "
          f"{sessions['relay_rss_loaded_kib'] / 1024:.1f} MiB with every session up: "
          f"**{sessions['relay_kib_per_session']:.1f} KiB per session**.")
        w(f"- Graceful restart (SIGTERM: the relay asks every session to move, drains, exits in "
          f"{sessions['shutdown_s']:.1f} s; then it starts again): all {sessions['sessions']:,} sessions were "
          f"back **{sessions['all_back_s']:.1f} s** after the new process started, with the connector's "
          f"reconnect policy (a drained session returns at a random point within 1 s; a failed attempt "
          f"backs off with full jitter from 1 s, capped at 60 s). Peak relay RSS during the storm: "
          f"{sessions['storm_peak_rss_kib'] / 1024:.1f} MiB; {sessions['failed_attempts']:,} attempts failed "
          f"(refused while the relay was down).")
        w("")
    w("The targets are for `relay-quic`; `relay-tcp` is the fallback and is shown in the tables above. "
      "HTTPS + HTTP/2 is h2load (8 connections × 16 streams) against nginx's own TLS + HTTP/2 server "
      "(`direct`) and the relay's HTTPS ingress; the nginx proxy path has no HTTPS front. For `cluster-cross` the "
      "relay RSS is node A's (the forwarding node).")
    w("")
    w("![req/s and latency per path](benchmarks.svg)")
    w("")
    notes = os.path.join(ROOT, "bench", "NOTES.md")
    if os.path.exists(notes):
        w(open(notes).read().rstrip())
        w("")

    if data.get("smoke"):
        target_md = os.path.join(ROOT, "bench", "results", "smoke.md")
        target_svg = os.path.join(ROOT, "bench", "results", "smoke.svg")
    else:
        target_md = os.path.join(ROOT, "docs", "benchmarks.md")
        target_svg = os.path.join(ROOT, "docs", "benchmarks.svg")
    with open(target_md, "w") as f:
        f.write("\n".join(lines))
    with open(target_svg, "w") as f:
        f.write(svg(paths, [absolute(lambda r: r["c64"]["rps"], p) for p in paths],
                    [absolute(lambda r: r["c1"]["p50_us"], p) for p in paths]))
    print(target_md)


def svg(paths, rps, p50):
    """Two bar charts side by side: req/s at c64 and p50 latency at c1."""
    W, H, pad, bar = 720, 260, 40, 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>']
    for i, (title, vals, unit) in enumerate([("req/s, c64 keep-alive", rps, ""), ("p50 latency at c1 (µs)", p50, "")]):
        x0 = pad + i * (W // 2)
        top = max(v or 0 for v in vals) or 1
        out.append(f'<text x="{x0}" y="20" font-weight="bold">{title}</text>')
        for j, (p, v) in enumerate(zip(paths, vals)):
            h = (v or 0) / top * (H - 90)
            x = x0 + j * (bar + 30)
            y = H - 40 - h
            out.append(f'<rect x="{x}" y="{y:.1f}" width="{bar}" height="{h:.1f}" fill="#4a78b5"/>')
            out.append(f'<text x="{x + bar / 2}" y="{y - 4:.1f}" text-anchor="middle">{(v or 0):.0f}</text>')
            out.append(f'<text x="{x + bar / 2}" y="{H - 22}" text-anchor="middle">{p}</text>')
    out.append("</svg>")
    return "\n".join(out)


if __name__ == "__main__":
    main(sys.argv[1])
