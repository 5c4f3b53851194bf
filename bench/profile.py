"""Profile the request path: the release relay-server and connector under wrk at c64 (small
responses), sampled with `perf record`; prints each process's hottest symbols and CPU time per
request. Uses the harness's nginx backend and ports (bench/bench.py); run bench/run.sh once first
so the release binaries exist.

Usage: python3 bench/profile.py [--transport quic|tcp] [--duration SECONDS] [--callgraph] [--no-perf]
                               [--close] [--relay-bin PATH] [--connector-bin PATH]
(--no-perf also counts each process's system calls and context switches per request; --close sends
every request on a new visitor connection that it asks to close)
       python3 bench/profile.py --trace [--transport quic|tcp]

--trace follows single requests instead: 40 requests one at a time on one keep-alive connection,
20 ms apart, with `perf trace` recording the relay's, connector's and nginx's socket, epoll and
futex calls; it prints the timeline of the median request (µs from the relay's read of the
request), so the gaps between the hops can be read off.

The runtime's worker count can be tried with TOKIO_WORKER_THREADS=N (read by both binaries).
"""

import argparse
import os
import re
import socket
import statistics
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
    ap.add_argument("--trace", action="store_true", help="print the syscall timeline of single requests")
    ap.add_argument("--close", action="store_true", help="a new visitor connection per request (Connection: close)")
    ap.add_argument("--relay-bin", default=os.path.join(bench.RELEASE, "relay-server"))
    ap.add_argument("--connector-bin", default=os.path.join(bench.RELEASE, "connector"))
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="relay-profile-")
    os.chmod(work, 0o755)
    procs = []
    try:
        bench.write_site(work, 1 << 20)
        procs.append(bench.start(["nginx", "-c", f"{work}/nginx.conf", "-p", work]))
        bench.wait_port(bench.PORTS["backend"])
        relay_bin, conn_bin = args.relay_bin, args.connector_bin
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
        bench.wrk(url, 64, 2, 2, close=args.close)  # warm-up

        pids = {"relay-server": relay.pid, "connector": conn.pid}
        if args.trace:
            trace(work, [relay.pid, conn.pid, procs[0].pid])
            return
        records = {}
        perfs = []
        for name, pid in ({} if args.no_perf else pids).items():
            out = f"{work}/{name}.perf"
            records[name] = out
            cmd = ["perf", "record", "-q", "-F", "1999", "-p", str(pid), "-o", out]
            if args.callgraph:
                cmd += ["--call-graph", "dwarf,16384"]
            perfs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # Without sampling: count each process's system calls and context switches instead.
        stats = {}
        for name, pid in (pids if args.no_perf else {}).items():
            stats[name] = subprocess.Popen(
                ["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter,context-switches", "-p", str(pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        before = {n: cpu_ticks(p) for n, p in pids.items()}
        result = bench.wrk(url, 64, 2, args.duration, close=args.close)
        after = {n: cpu_ticks(p) for n, p in pids.items()}
        for p in perfs:
            p.send_signal(2)
            p.wait(timeout=60)
        counts = {}
        for name, p in stats.items():
            p.send_signal(2)
            _, err = p.communicate(timeout=60)
            counts[name] = {line.split(",")[2]: float(line.split(",")[0]) for line in err.splitlines()
                            if line.count(",") >= 2 and line.split(",")[0].replace(".", "").isdigit()}
        requests = result["rps"] * args.duration
        hz = os.sysconf("SC_CLK_TCK")
        load = "c64, Connection: close" if args.close else "c64"
        print(f"transport {args.transport}: {result['rps']:.0f} req/s at {load}, errors {result.get('errors', 0)}")
        for name in pids:
            cpu_us = (after[name] - before[name]) / hz * 1e6
            print(f"{name}: {cpu_us / max(requests, 1):.1f} µs CPU per request")
            if name in counts:
                # Counted a little longer than wrk ran (perf stat starts before, stops after).
                per = {k: v / max(requests, 1) for k, v in counts[name].items()}
                print(f"  {per.get('raw_syscalls:sys_enter', 0):.1f} system calls and "
                      f"{per.get('context-switches', 0):.2f} context switches per request")
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


TRACED = "read,write,readv,writev,recvfrom,sendto,recvmsg,sendmsg,recvmmsg,sendmmsg,epoll_wait,epoll_pwait,futex"


def with_children(pid):
    """A process and its children (nginx's workers): their pids, for perf trace."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid] + [int(p) for p in out]


def threads_of_all(pid):
    """Every thread id of a process and of its children."""
    tids = []
    for p in with_children(pid):
        try:
            tids += [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            pass
    return tids


def trace(work, pids):
    targets = [p for pid in pids for p in with_children(pid)]
    out = f"{work}/trace.txt"
    tracer = subprocess.Popen(["perf", "trace", "-T", "-e", TRACED, "-p", ",".join(map(str, targets)), "-o", out],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)
    s = socket.create_connection(("127.0.0.1", bench.PORTS["relay_http"]))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = b"GET /relay/bench/app/small HTTP/1.1\r\nHost: bench\r\n\r\n"
    spans = []
    for _ in range(40):
        t0 = time.perf_counter()
        s.sendall(request)
        got = b""
        while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < 100:
            got += s.recv(65536)
        spans.append((time.perf_counter() - t0) * 1e6)
        time.sleep(0.02)
    s.close()
    time.sleep(0.5)
    tracer.send_signal(2)
    tracer.wait(timeout=30)
    print(f"client round trips: median {statistics.median(spans):.0f} µs, min {min(spans):.0f} µs")
    # Lines: "1234.567 (0.012 ms): comm/tid call(args) = ret", or a call split in two: its start
    # ("... call(args) ...") and its return ("comm/tid  ... [continued]: call()) = ret"). A wait is
    # placed where it returned (the thread woke), any other call where it started.
    names = {tid: name for pid, name in zip(pids, ["relay", "connector", "nginx"])
             for tid in threads_of_all(pid)}
    events = []
    pat = re.compile(r"^\s*([\d.]+) \(\s*([\d.]*) ?m?s?\): (\S+?)/(\d+)\s+(.*)$")
    for line in open(out):
        m = pat.match(line)
        if not m or line.rstrip().endswith("..."):
            continue
        ts, dur, comm, tid, rest = m.groups()
        ts, dur, tid = float(ts), float(dur or 0), int(tid)
        call = re.match(r"(?:\.\.\. \[continued\]: )?(\w+)\((.*?)\)+\s*= (.*)$", rest)
        if not call:
            continue
        name, argstr, ret = call.groups()
        waits = name.startswith("epoll") or (name == "futex" and "WAIT" in argstr)
        at = ts + dur if waits else ts
        if waits and ret.strip() in ("0", "-1 ETIMEDOUT (Connection timed out)") and name.startswith("epoll"):
            continue  # an empty timeout, not a wake-up
        who = names.get(tid, comm)
        events.append((at, who, tid, ("woke: " if waits else "") + name, argstr, ret.strip()))
    events.sort()
    bursts, current = [], []
    for e in events:
        if current and e[0] - current[-1][0] > 8:
            bursts.append(current)
            current = []
        current.append(e)
    if current:
        bursts.append(current)
    bursts = [b for b in bursts if any(e[1] == "nginx" for e in b) and len(b) > 4]
    if not bursts:
        raise SystemExit(f"no request found in the trace ({len(events)} events): {out}")
    bursts.sort(key=lambda b: b[-1][0] - b[0][0])
    b = bursts[len(bursts) // 2]
    t0 = b[0][0]
    print(f"{len(bursts)} requests traced (perf trace slows each call); the median one, "
          f"{(b[-1][0] - t0) * 1000:.0f} µs from first to last call:")
    for at, who, tid, name, argstr, ret in b:
        print(f"{(at - t0) * 1000:8.0f} µs  {who:>9}/{tid:<7} {name}({argstr[:50]}) = {ret[:16]}")
    print(f"trace: {out}")


if __name__ == "__main__":
    main()
