"""Profile the request path: the release relay-server and connector under wrk at c64 (small
responses), sampled with `perf record`; prints each process's hottest symbols and CPU time per
request. Uses the harness's nginx backend and ports (bench/bench.py); run bench/run.sh once first
so the release binaries exist.

Usage: python3 bench/profile.py [--transport quic|tcp] [--duration SECONDS] [--callgraph] [--no-perf]

The runtime's worker count can be tried with TOKIO_WORKER_THREADS=N (read by both binaries).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--transport", default="quic", choices=["quic", "tcp"])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--callgraph", action="store_true", help="record call graphs (dwarf)")
    ap.add_argument("--top", type=int, default=35)
    ap.add_argument("--no-perf", action="store_true", help="only measure: req/s, c1 latency, CPU/request")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="relay-profile-")
    os.chmod(work, 0o755)
    procs = []
    try:
        bench.write_site(work, 1 << 20)
        procs.append(bench.start(["nginx", "-c", f"{work}/nginx.conf", "-p", work]))
        bench.wait_port(bench.PORTS["backend"])
        relay_bin = os.path.join(bench.RELEASE, "relay-server")
        conn_bin = os.path.join(bench.RELEASE, "connector")
        data = f"{work}/relay-data"
        bench.provision(relay_bin, data, "bench", f"{work}/secret")
        relay = bench.start([relay_bin, "--data-dir", data, "run", "--listen", f"127.0.0.1:{bench.PORTS['relay']}",
                             "--listen-http", f"127.0.0.1:{bench.PORTS['relay_http']}"],
                            env={"RELAY_LIMITS__MAX_CONCURRENT_STREAMS": "4096", "RUST_LOG": "warn"})
        procs.append(relay)
        bench.wait_port(bench.PORTS["relay_http"])
        conn = bench.start([conn_bin, "run", "--server", f"https://127.0.0.1:{bench.PORTS['relay']}",
                            "--tenant", "bench", "--secret-file", f"{work}/secret",
                            "--ca-cert", f"{data}/tls/cert.pem", "--transport", args.transport,
                            "--target", f"app=http://127.0.0.1:{bench.PORTS['backend']}"],
                           env={"RUST_LOG": "warn"})
        procs.append(conn)
        url = f"http://127.0.0.1:{bench.PORTS['relay_http']}/relay/bench/app/small"
        deadline = time.time() + 30
        while True:
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except Exception:
                if time.time() > deadline:
                    raise SystemExit("the tunnel did not come up")
                time.sleep(0.2)
        bench.wrk(url, 64, 2, 2)  # warm-up

        pids = {"relay-server": relay.pid, "connector": conn.pid}
        records = {}
        perfs = []
        for name, pid in ({} if args.no_perf else pids).items():
            out = f"{work}/{name}.perf"
            records[name] = out
            cmd = ["perf", "record", "-q", "-F", "1999", "-p", str(pid), "-o", out]
            if args.callgraph:
                cmd += ["--call-graph", "dwarf,16384"]
            perfs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)
        before = {n: cpu_ticks(p) for n, p in pids.items()}
        result = bench.wrk(url, 64, 2, args.duration)
        after = {n: cpu_ticks(p) for n, p in pids.items()}
        for p in perfs:
            p.send_signal(2)
            p.wait(timeout=60)
        requests = result["rps"] * args.duration
        hz = os.sysconf("SC_CLK_TCK")
        print(f"transport {args.transport}: {result['rps']:.0f} req/s at c64, errors {result.get('errors', 0)}")
        for name in pids:
            cpu_us = (after[name] - before[name]) / hz * 1e6
            print(f"{name}: {cpu_us / max(requests, 1):.1f} µs CPU per request")
        if args.no_perf:
            direct = bench.wrk(f"http://127.0.0.1:{bench.PORTS['backend']}/small", 1, 1, args.duration)
            relayed = bench.wrk(url, 1, 1, args.duration)
            print(f"c1 p50: direct {direct['p50_us']:.0f} µs, relay {relayed['p50_us']:.0f} µs "
                  f"(+{relayed['p50_us'] - direct['p50_us']:.0f} µs)")
        for name, out in records.items():
            print(f"\n=== {name}: hottest symbols (self time) ===")
            report = subprocess.run(["perf", "report", "-i", out, "--no-children", "--sort", "symbol",
                                     "--stdio", "-q", "--percent-limit", "0.7"],
                                    capture_output=True, text=True).stdout
            lines = [re.sub(r"\s+-\s+-\s*$", "", l).rstrip() for l in report.splitlines()
                     if l.strip() and not l.startswith("#")]
            print("\n".join(lines[: args.top]))
        if not args.no_perf:
            print(f"\nperf data: {work}/*.perf")
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 15)
            except OSError:
                pass


if __name__ == "__main__":
    main()
