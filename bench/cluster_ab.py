"""Paired runs of the cluster paths for two builds: what a change to cross-node forwarding bought.

Starts the nginx backend and, for each build (`--old DIR`, `--new DIR`, each holding a release
relay-server and connector), its own throwaway PostgreSQL, two relay nodes A and B and a QUIC
connector on B; then measures `direct`, `{build}-same` (visitor → B → connector) and
`{build}-cross` (visitor → A → node link → B → connector) in interleaved rounds: wrk at c64 and
at c1, and a 256 MiB download. Prints the medians and, per build, cross against same (the figures
issue 15 sets targets for). Nothing is written to bench/results.

Usage: python3 bench/cluster_ab.py --old /tmp/old-bin --new target/release [--rounds 5] [--duration 5]
"""

import argparse
import os
import statistics
import sys
import tempfile
import shutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import PORTS, log, provision, start, start_postgres, wait_port, wrk, write_site  # noqa: E402

# Node ports per build, away from bench.py's.
NODE_PORTS = {"old": {"a": 19543, "a_http": 19190, "b": 19643, "b_http": 19290},
              "new": {"a": 19743, "a_http": 19390, "b": 19843, "b_http": 19490}}
BIG = 256 << 20


def start_cluster(build, bin_dir, work, procs, stops):
    relay_bin, conn_bin = os.path.join(bin_dir, "relay-server"), os.path.join(bin_dir, "connector")
    home = f"{work}/{build}"
    os.makedirs(home)
    pg_url, stop_pg = start_postgres(home)
    stops.append(stop_pg)
    data = f"{home}/data"
    provision(relay_bin, data, "cluster", f"{home}/secret", pg_url)
    ports = NODE_PORTS[build]
    for node in ("b", "a"):
        procs.append(start([relay_bin, "--data-dir", data, "--database-url", pg_url, "run",
                            "--listen", f"127.0.0.1:{ports[node]}",
                            "--listen-http", f"127.0.0.1:{ports[node + '_http']}"],
                           env={"RELAY_NODE_NAME": f"{build}-{node}", "RUST_LOG": "warn",
                                "RELAY_LIMITS__MAX_BODY_BYTES": str(4 << 30),
                                "RELAY_LIMITS__MAX_CONCURRENT_STREAMS": "4096"}))
        wait_port(ports[node + "_http"])
    procs.append(start([conn_bin, "run", "--server", f"https://127.0.0.1:{ports['b']}", "--tenant", "cluster",
                        "--secret-file", f"{home}/secret", "--ca-cert", f"{data}/tls/cert.pem",
                        "--transport", "quic", "--target", f"app=http://127.0.0.1:{PORTS['backend']}"],
                       env={"RUST_LOG": "warn"}))
    same = f"http://127.0.0.1:{ports['b_http']}/relay/cluster/app"
    cross = f"http://127.0.0.1:{ports['a_http']}/relay/cluster/app"
    for url in (same, cross):
        bench_ready(url)
    return {f"{build}-same": same, f"{build}-cross": cross}


def bench_ready(base):
    import time
    import urllib.request
    deadline = time.time() + 30
    while True:
        try:
            if urllib.request.urlopen(f"{base}/small", timeout=2).status == 200:
                return
        except Exception as e:  # noqa: BLE001 — retried until the deadline
            if time.time() > deadline:
                raise SystemExit(f"{base} did not come up: {e}")
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="directory with the old release relay-server and connector")
    ap.add_argument("--new", required=True, help="directory with the new ones")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="relay-cluster-ab-")
    os.chmod(work, 0o755)
    procs, stops = [], []
    try:
        write_site(work, BIG)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        procs.append(start([nginx, "-c", f"{work}/nginx.conf", "-p", work]))
        wait_port(PORTS["backend"])
        paths = {"direct": f"http://127.0.0.1:{PORTS['backend']}"}
        paths.update(start_cluster("old", args.old, work, procs, stops))
        paths.update(start_cluster("new", args.new, work, procs, stops))
        rows = {name: {"c64": [], "c1": [], "dl": []} for name in paths}
        for r in range(args.rounds):
            for name, base in paths.items():
                log(f"round {r + 1}/{args.rounds}: {name}")
                rows[name]["c64"].append(wrk(f"{base}/small", 64, 2, args.duration)["rps"])
                rows[name]["c1"].append(wrk(f"{base}/small", 1, 1, args.duration)["p50_us"])
                rows[name]["dl"].append(bench.curl_speed([f"{base}/big"], "speed_download"))
        med = {n: {k: statistics.median(v) for k, v in row.items()} for n, row in rows.items()}
        print(f"\n{args.rounds} rounds of {args.duration} s; medians")
        print("| path | req/s c64 | p50 c1 (µs) | download MiB/s |")
        print("|---|---|---|---|")
        for n, m in med.items():
            print(f"| {n} | {m['c64']:.0f} | {m['c1']:.0f} | {m['dl']:.0f} |")
        print("\n| build | c64 cross / same | c1 p50 cross − same | download cross / same |")
        print("|---|---|---|---|")
        for build in ("old", "new"):
            s, c = med[f"{build}-same"], med[f"{build}-cross"]
            print(f"| {build} | {c['c64'] / s['c64']:.2f}× | +{c['c1'] - s['c1']:.0f} µs | {c['dl'] / s['dl']:.2f}× |")
        print("\nper round (c64 req/s, c1 p50 µs):")
        for n, row in rows.items():
            print(f"  {n}: {[round(x) for x in row['c64']]} {[round(x) for x in row['c1']]}")
    except BaseException:
        bench.dump_logs()
        raise
    finally:
        bench.teardown(procs, stops, work)


if __name__ == "__main__":
    main()
