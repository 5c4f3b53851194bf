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
    w(f"- Versions: {v['relay']}; {v['nginx']}; {v['wrk']}"
      + "".join(f"; {v[p]}" for p in ("rathole", "bore") if p in v) + ".")
    w("- Paths: `direct` = wrk/curl → nginx; `nginx` = nginx one-hop L7 proxy (HTTP/1.1 upstream keep-alive, the "
      "anchor); `relay-quic` = visitor → relay plain-HTTP ingress → QUIC session → connector → nginx; `relay-tcp` = the "
      "same over a TLS-over-TCP session (the fallback transport, `--transport tcp`); `cluster-same` = visitor → relay "
      "node B (one of two nodes sharing a PostgreSQL) → QUIC session → connector → nginx; `cluster-cross` = visitor → "
      "node A, which holds no session of the tenant → node link (QUIC) → node B → connector → nginx. Connectors "
      "keep their default 2 sessions. The peers forward TCP, not HTTP, each with its own client beside the "
      "backend (bench/peers.py, installed from crates.io at pinned versions): `rathole-tls` = visitor → rathole "
      "server → TLS transport → rathole client → nginx; `rathole-tcp` = the same on rathole's plain TCP transport; "
      "`bore` = visitor → bore server → bore client → nginx (plain TCP, one connection per visitor connection). "
      "Uploads go to a small sink (bench/sink.py) on every path.")
    for name, why in sorted(data.get("unavailable", {}).items()):
        w(f"- `{name}` could not be measured: {why}")
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
          f"{idle['relay']:.1f} KiB"
          + "".join(f"; `{p}` server {idle[p]:.1f} KiB" for p in ("rathole-tls", "rathole-tcp", "bore") if p in idle)
          + ".")
    for path in ("rathole-tls", "rathole-tcp", "bore"):
        rq = [by[(rd, path)] for rd in rounds if (rd, path) in by]
        if rq:
            server_growth = max(r["relay_rss_kib"]["peak"] - r["relay_rss_kib"]["base"] for r in rq)
            client_growth = max(r["connector_rss_kib"]["peak"] - r["connector_rss_kib"]["base"] for r in rq)
            w(f"- `{path}`: largest RSS growth in one round: server {server_growth / 1024:.1f} MiB (from "
              f"{rq[0]['relay_rss_kib']['base'] / 1024:.1f} MiB), client {client_growth / 1024:.1f} MiB (from "
              f"{rq[0]['connector_rss_kib']['base'] / 1024:.1f} MiB).")
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
    queue = load_queue(data.get("smoke"))
    if queue:
        pg = queue_medians(queue, "postgres")
        if pg:
            w(f"| queue mode: accept rate, 1 KiB bodies, 16 visitors, PostgreSQL | ≥ 0.5× the bare INSERT + COMMIT loop "
              f"in the same run | {fmt(pg['ratio'])} ({pg['accept']:.0f} against {pg['limit']:.0f} messages/s) |")
    w("")
    if queue:
        lines.extend(queue_section(queue))
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


def load_queue(smoke):
    """bench/queue.py's results: queue.json, or for a smoke page queue-smoke.json when present."""
    names = ["queue-smoke.json", "queue.json"] if smoke else ["queue.json"]
    for name in names:
        path = os.path.join(ROOT, "bench", "results", name)
        if os.path.exists(path):
            return json.load(open(path))
    return None


def queue_medians(queue, store):
    """Medians over the rounds of one store: accept, limit, their ratio (per round), delivery."""
    rows = [r for r in queue["results"] if r["store"] == store]
    if not rows:
        return None
    ratios = [r["accept"]["messages_per_s"] / r["limit"]["messages_per_s"] for r in rows
              if r["limit"]["messages_per_s"]]
    one = [r["limit_one_writer"]["messages_per_s"] for r in rows if "limit_one_writer" in r]
    notify = [r["limit_with_notify"]["messages_per_s"] for r in rows if "limit_with_notify" in r]
    return {
        "rounds": len(rows),
        "accept": med([r["accept"]["messages_per_s"] for r in rows]),
        "p50_us": med([r["accept"]["p50_us"] for r in rows]),
        "p99_us": med([r["accept"]["p99_us"] for r in rows]),
        "accept_cpu": med([r["accept"]["relay_cpu_us_per_message"] for r in rows]),
        "errors": sum(r["accept"]["errors"] for r in rows),
        "first_second": med([r["accept"]["per_second"][0] for r in rows if r["accept"]["per_second"]]),
        "last_second": med([r["accept"]["per_second"][-1] for r in rows if r["accept"]["per_second"]]),
        "messages": med([r["accept"]["accepted"] for r in rows]),
        "limit": med([r["limit"]["messages_per_s"] for r in rows]),
        "limit_tool": rows[0]["limit"]["tool"],
        "limit_one": med(one),
        "limit_notify": med(notify),
        "deliver_first_third": med([r["deliver"].get("first_third_per_s") for r in rows]),
        "deliver_last_third": med([r["deliver"].get("last_third_per_s") for r in rows]),
        "ratio": med(ratios),
        "deliver": med([r["deliver"]["messages_per_s"] for r in rows]),
        "first_s": med([r["deliver"]["first_s"] for r in rows]),
        "all_s": med([r["deliver"]["all_s"] for r in rows]),
        "deliver_cpu": med([r["deliver"]["relay_cpu_us_per_message"] for r in rows]),
        "connector_cpu": med([r["deliver"]["connector_cpu_us_per_message"] for r in rows]),
        "retries": sum(r["deliver"]["retries"] + r["deliver"]["failed"] for r in rows),
    }


def queue_section(queue):
    """The "Queue mode" section: accept and delivery rates against the store's own limit."""
    lines = []
    w = lines.append
    f0 = lambda x: "n/a" if x is None else f"{x:.0f}"
    w("## Queue mode (bench/queue.py)")
    w("")
    w(f"- Run: {queue['when']}{' (smoke)' if queue.get('smoke') else ''}; {queue['rounds']} round(s) per store, "
      f"interleaved; {queue['duration_s']} s of accepting and of each limit run; "
      f"{queue['body_bytes']}-byte bodies, {queue['concurrency']} concurrent visitors (wrk `-c{queue['concurrency']}`, "
      "plain-HTTP ingress). Every round starts from an empty database.")
    w("- **Accept**: `POST /queue/bench/app/in` with the tenant's connector offline, so every message is "
      "committed and waits. **Deliver**: then the connector starts (its default 2 sessions; the relay's default "
      "`queue.parallel` = 16) against an nginx answering 200; from the first to the last delivery. **Limit**: the "
      "same payload inserted and committed, one row per transaction, by a bare loop with "
      f"{queue['concurrency']} concurrent clients into a fresh copy of the relay's own table (`0010_queue.sql`): "
      "pgbench on PostgreSQL, Python sqlite3 threads with the relay's pragmas on SQLite.")
    w(f"- PostgreSQL: a throwaway local cluster, fsync {queue.get('pg_fsync', 'on')}. SQLite: WAL, `synchronous = "
      f"{queue.get('sqlite_synchronous', 'NORMAL')}` (a commit is not synced to disk; a checkpoint is).")
    w("")
    w("| store | accept msg/s | limit msg/s | accept / limit | accept p50 / p99 (µs) | accept rate 1st → last s | "
      "deliver msg/s (1st → last third) | first delivery after | CPU µs/msg: relay accept / deliver, connector | "
      "errors |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for store in ("sqlite", "postgres"):
        m = queue_medians(queue, store)
        if not m:
            continue
        limit = f0(m["limit"])
        if m["limit_one"] is not None:
            limit += f" ({f0(m['limit_one'])} one writer)"
        if m["limit_notify"] is not None:
            limit += f" ({f0(m['limit_notify'])} with NOTIFY)"
        ratio = "n/a" if m["ratio"] is None else f"{m['ratio']:.2f}×"
        w(f"| {store} | {f0(m['accept'])} | {limit} | {ratio} | "
          f"{f0(m['p50_us'])} / {f0(m['p99_us'])} | {f0(m['first_second'])} → {f0(m['last_second'])} | "
          f"{f0(m['deliver'])} ({f0(m['deliver_first_third'])} → {f0(m['deliver_last_third'])}) | {m['first_s']:.2f} s | "
          f"{f0(m['accept_cpu'])} / {f0(m['deliver_cpu'])}, {f0(m['connector_cpu'])} | "
          f"{m['errors']} refused, {m['retries']} retried or failed |")
    w("")
    w("The target (issue 16): accept ≥ 0.5× the limit on PostgreSQL. The limit is what the database commits "
      "with nothing in front of it; a 202 is sent only after the relay's own commit, so the relay can approach it "
      "but not pass it. \"With NOTIFY\" is the same loop with `NOTIFY relay_queue` in each transaction (a diagnostic: "
      "PostgreSQL serialises the commits of notifying transactions, which is why the relay notifies after its "
      "commit, at most once per 20 ms). The delivery thirds "
      "show whether delivering gets faster as the queue drains (work per wake-up that grows with the depth).")
    w("")
    return lines


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
