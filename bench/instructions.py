"""Instructions per request, counted by valgrind's callgrind: the release relay-server and connector
each run under callgrind while a fixed number of small requests goes through them, at one
connection (c1) and at 64 (c64). Instruction counts do not drift with the machine's load, so two
builds can be compared on a busy machine, and a change's effect shows even where req/s cannot
separate it from noise.

Counting starts after the warm-up (`callgrind_control --zero`) and ends with a dump after the last
request and the audit records it left have been written, so start-up and shutdown are not in the
figures and every request's audit insert is. Keep-alives and idle timeouts are
lengthened so that the slow-down under valgrind (about 50×) does not end sessions.

Usage: python3 bench/instructions.py [--transport quic|tcp] [--requests N] [--top N]
                                     [--relay-bin PATH] [--connector-bin PATH] [--cluster] [--close]
With --close, every request comes on a new visitor connection that it asks to close (the
`Connection: close` figure), sent by Python clients instead of h2load.
With --cluster, two relay nodes share a throwaway PostgreSQL, the connector holds its session on
node B and the requests go to node A: the cross-node path, each node counted on its own.
Needs the release binaries (cargo build --release -p relay-server -p connector), nginx, h2load
and valgrind. Prints instructions per request per process and load, and the hottest functions
(self instructions) at c64.
"""

import argparse
import glob
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


# Seconds to wait before zeroing and before dumping: the relay's audit writer holds a partial
# batch for up to 200 ms and then inserts it (slowly, under valgrind). Without the wait a window
# missed the insert of its last few hundred requests' records, and the relay's figure moved by
# several percent with how many happened to be flushed.
SETTLE = 3.0


def callgrind(cmd, out):
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd]


def control(pid, *args):
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def total_of(path):
    """The `summary:`/`totals:` instruction count of a callgrind dump (one event: Ir)."""
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit(f"{path}: no totals line")


def closing(url, conns, n):
    """`n` requests over `conns` concurrent clients, each on a new connection that the request
    asks to close (`Connection: close`): what a visitor connection costs on top of its request."""
    u = urllib.parse.urlsplit(url)
    request = (f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}\r\nConnection: close\r\n\r\n").encode()
    left = [n]
    lock = threading.Lock()
    failed = []

    def client():
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            try:
                with socket.create_connection((u.hostname, u.port), timeout=60) as s:
                    s.sendall(request)
                    got = b""
                    while chunk := s.recv(65536):
                        got += chunk
            except OSError as e:
                failed.append(repr(e))
                continue
            if not got.startswith(b"HTTP/1.1 200"):
                failed.append(got[:80])

    threads = [threading.Thread(target=client) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise SystemExit(f"not every request succeeded: {failed[:3]}")
    return n


def h2load(url, conns, n):
    out = subprocess.run(["h2load", "--h1", f"-n{n}", f"-c{conns}", "-t1", url],
                         capture_output=True, text=True, timeout=1800).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not done or int(done.group(2)) != n:
        raise SystemExit(f"h2load: not every request succeeded\n{out}")
    return n


def top(path, count):
    """The functions with the most self instructions in a callgrind dump (parsed here: the
    callgrind_annotate of valgrind 3.19 puts everything under `clone` for dumps taken with
    callgrind_control)."""
    names, cost, fn, skip, total = {}, {}, None, False, 0
    with open(path) as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if m and m.group(2):
                    names[m.group(1)] = m.group(2)
                if line.startswith("fn="):
                    fn = m.group(1) if m else line[3:].strip()
                continue
            if line.startswith("calls="):
                skip = True  # the next cost line is the call's inclusive cost
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                if skip:
                    skip = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and fn is not None:
                    ir = int(parts[1])
                    cost[fn] = cost.get(fn, 0) + ir
                    total += ir
    rows = sorted(cost.items(), key=lambda kv: -kv[1])[:count]
    return [f"{100 * c / max(total, 1):6.2f}%  {names.get(k, k)[:150]}" for k, c in rows]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--transport", default="quic", choices=["quic", "tcp"])
    ap.add_argument("--requests", type=int, default=2000, help="requests per load (c1 and c64)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--relay-bin", default=os.path.join(bench.RELEASE, "relay-server"))
    ap.add_argument("--connector-bin", default=os.path.join(bench.RELEASE, "connector"))
    ap.add_argument("--cluster", action="store_true",
                    help="two relay nodes on a throwaway PostgreSQL, the connector on node B, the "
                         "requests sent to node A (the cross-node path)")
    ap.add_argument("--close", action="store_true",
                    help="a new visitor connection per request (Connection: close) instead of "
                         "keep-alive connections")
    args = ap.parse_args()
    load = closing if args.close else h2load

    work = tempfile.mkdtemp(prefix="relay-instructions-")
    os.chmod(work, 0o755)
    procs, stops = [], []
    try:
        bench.write_site(work, 1 << 20)
        procs.append(bench.start(["nginx", "-c", f"{work}/nginx.conf", "-p", work]))
        bench.wait_port(bench.PORTS["backend"])
        data = f"{work}/relay-data"
        db = None
        if args.cluster:
            db, stop_pg = bench.start_postgres(work)
            stops.append(stop_pg)
        bench.provision(args.relay_bin, data, "bench", f"{work}/secret", db)
        # The relay (node B under --cluster, holding the connector's session), then node A.
        nodes = {"relay-server": (bench.PORTS["relay"], bench.PORTS["relay_http"])}
        if args.cluster:
            nodes = {"node-b": (bench.PORTS["relay"], bench.PORTS["relay_http"]),
                     "node-a": (bench.PORTS["relay"] + 100, bench.PORTS["relay_http"] + 100)}
        pids = {}
        for name, (port, http_port) in nodes.items():
            node = bench.start(callgrind([args.relay_bin, "--data-dir", data,
                                          *(["--database-url", db] if db else []), "run",
                                          "--listen", f"127.0.0.1:{port}",
                                          "--listen-http", f"127.0.0.1:{http_port}"],
                                         f"{work}/{name}.%p.out"),
                               env={"RELAY_LIMITS__MAX_CONCURRENT_STREAMS": "4096", "RUST_LOG": "warn",
                                    "RELAY_TUNNEL__IDLE_TIMEOUT": "60s", "RELAY_NODE_NAME": name})
            procs.append(node)
            pids[name] = node.pid
            bench.wait_port(http_port, timeout=120)
            # The listeners open before the node makes its self-signed certificate (slowly, under
            # valgrind): the connector needs it, and the next node (same data directory) then reads
            # it instead of making its own in vain.
            deadline = time.time() + 120
            while not os.path.exists(f"{data}/tls/cert.pem") and time.time() < deadline:
                time.sleep(0.2)
        conn = bench.start(callgrind([args.connector_bin, "run",
                                      "--server", f"https://127.0.0.1:{bench.PORTS['relay']}",
                                      "--tenant", "bench", "--secret-file", f"{work}/secret",
                                      "--ca-cert", f"{data}/tls/cert.pem", "--transport", args.transport,
                                      "--target", f"app=http://127.0.0.1:{bench.PORTS['backend']}"],
                                     f"{work}/connector.%p.out"),
                           env={"RUST_LOG": "warn", "CONNECTOR_SESSION__KEEP_ALIVE": "10s",
                                "CONNECTOR_SESSION__IDLE_TIMEOUT": "60s"})
        procs.append(conn)
        pids["connector"] = conn.pid
        # Under --cluster the requests go to node A, which forwards them over its node link to B.
        first_http = list(nodes.values())[-1][1]
        url = f"http://127.0.0.1:{first_http}/relay/bench/app/small"
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(url, timeout=10).status == 200:
                    break
            except Exception:
                if time.time() > deadline:
                    bench.dump_logs()
                    raise SystemExit("the tunnel did not come up")
                time.sleep(0.5)
        h2load(url, 64, 500)  # warm-up: connections, sessions' streams, allocator pools
        results = {}
        for conns in (1, 64):
            time.sleep(SETTLE)
            for pid in pids.values():
                control(pid, "--zero")
            n = load(url, conns, args.requests)
            time.sleep(SETTLE)
            for name, pid in pids.items():
                before = set(glob.glob(f"{work}/{name}.{pid}.out*"))
                control(pid, "--dump")
                new = sorted(set(glob.glob(f"{work}/{name}.{pid}.out*")) - before,
                             key=os.path.getmtime)
                if not new:
                    raise SystemExit(f"{name}: callgrind wrote no dump")
                results[(name, conns)] = (total_of(new[-1]) / n, new[-1])
        print(f"transport {args.transport}, {args.requests} requests per load"
              f"{', a new connection per request' if args.close else ''}"
              f"{' through node A to node B' if args.cluster else ''}, instructions per request:")
        print(f"{'process':<14} {'c1':>10} {'c64':>10}")
        for name in pids:
            print(f"{name:<14} {results[(name, 1)][0]:>10,.0f} {results[(name, 64)][0]:>10,.0f}")
        both = {c: sum(results[(n, c)][0] for n in pids) for c in (1, 64)}
        print(f"{'all':<14} {both[1]:>10,.0f} {both[64]:>10,.0f}")
        for name in pids:
            print(f"\n=== {name} at c64: hottest functions (self instructions) ===")
            print("\n".join(top(results[(name, 64)][1], args.top)))
        print(f"\ncallgrind dumps: {work}")
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 15)
            except OSError:
                pass
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
        for stop in stops:
            try:
                stop()
            except subprocess.CalledProcessError:
                pass


if __name__ == "__main__":
    main()
