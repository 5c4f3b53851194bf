"""The benchmark harness (see ../shared/benchmarks.md for the method).

Starts an nginx backend, an nginx one-hop proxy (the anchor), an upload sink, and the release
relay-server + connector on loopback; then measures every path in interleaved rounds
(A B C A B C ...): wrk throughput at c64, latency at c1, Connection: close, a large download and
upload with curl, and memory per idle visitor connection. Results go to bench/results/latest.json;
bench/report.py turns them into docs/benchmarks.md and docs/benchmarks.svg.

Usage: python3 bench/bench.py [--smoke] [--rounds N] [--duration SECONDS]
"""

import argparse
import glob
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import ssl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
PORTS = {"backend": 18080, "proxy": 18081, "sink": 18082, "relay": 18443, "relay_http": 18090, "backend_h2": 18444,
         # Two relay nodes on one PostgreSQL: the cross-node path (visitor → A → B → connector)
         # beside the same-node one (visitor → B → connector).
         "node_a": 18543, "node_a_http": 18190, "node_b": 18643, "node_b_http": 18290}
# The peers (bench/peers.py): their control port and the ports their tunnels expose.
PEER_PORTS = {"rathole-tls": {"control": 18700, "app": 18701, "sink": 18702},
              "rathole-tcp": {"control": 18710, "app": 18711, "sink": 18712},
              "bore": {"app": 18721, "sink": 18722}}
IDLE_CONNECTIONS = 1000


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler:
    """Peak RSS of some processes while a measurement runs."""

    def __init__(self, pids):
        self.pids = pids
        self.peak = {p: rss_kib(p) for p in pids}
        self.base = dict(self.peak)
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            for p in self.pids:
                self.peak[p] = max(self.peak[p], rss_kib(p))
            time.sleep(0.05)

    def finish(self):
        self.stop = True
        self.t.join()
        return self.base, self.peak


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} did not open")


def nginx_conf(work, big):
    return f"""
worker_processes 1;
daemon off;
error_log {work}/nginx-error.log warn;
pid {work}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    sendfile on;
    tcp_nodelay on;
    upstream backend {{ server 127.0.0.1:{PORTS['backend']}; keepalive 128; keepalive_requests 100000000; }}
    upstream sink {{ server 127.0.0.1:{PORTS['sink']}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{PORTS['backend']} backlog=4096;
        root {work}/www;
        location = /small {{ default_type text/plain; }}
        location = /big {{ default_type application/octet-stream; }}
    }}
    server {{
        listen 127.0.0.1:{PORTS['backend_h2']} ssl http2 backlog=4096;
        ssl_certificate {work}/h2-cert.pem;
        ssl_certificate_key {work}/h2-key.pem;
        ssl_protocols TLSv1.3;
        http2_max_concurrent_streams 128;
        root {work}/www;
        location = /small {{ default_type text/plain; }}
    }}
    server {{
        listen 127.0.0.1:{PORTS['proxy']} backlog=4096;
        client_max_body_size 0;
        location /upload {{
            proxy_pass http://sink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
        }}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def wrk(url, conns, threads, duration, close=False):
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", url]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct, val, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[pct] = float(val) * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return {"rps": rps, "p50_us": lat.get("50"), "p99_us": lat.get("99"), "errors": errors}


def h2load(url, duration):
    """HTTPS + HTTP/2: 8 connections × 16 concurrent streams for `duration` seconds."""
    out = subprocess.run(["h2load", "-c8", "-m16", "-t1", f"-D{duration}", url],
                         capture_output=True, text=True).stdout
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not m or not done:
        raise SystemExit(f"h2load {url}: unexpected output\n{out}")
    errors = int(done.group(3)) + int(done.group(4))
    if status:
        errors += int(status.group(3)) + int(status.group(4))
    return {"rps": float(m.group(1)), "errors": errors}


def curl_speed(args, field):
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", f"%{{http_code}} %{{{field}}}"] + args,
                         capture_output=True, text=True, check=True).stdout.split()
    if out[0] != "200":
        raise SystemExit(f"curl {args}: status {out[0]}")
    return float(out[1]) / (1024 * 1024)


def idle_connections(port, path, pid, count):
    """Opens `count` keep-alive connections, one request each, and returns KiB of RSS per
    connection held idle by `pid`."""
    before = rss_kib(pid)
    socks = []
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
        socks.append(s)
    time.sleep(1.0)
    after = rss_kib(pid)
    for s in socks:
        s.close()
    return max(after - before, 0) / count


def write_site(work, big):
    """The backend's files (`small`: 100 bytes, `big`: `big` bytes), a certificate for nginx's
    HTTPS + HTTP/2 server (the h2load `direct` path) and nginx.conf, in `work`; returns the big
    file's path."""
    os.makedirs(f"{work}/www")
    with open(f"{work}/www/small", "wb") as f:
        f.write(b"x" * 100)
    with open(f"{work}/www/big", "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(big >> 20):
            f.write(chunk)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", f"{work}/h2-key.pem",
                    "-out", f"{work}/h2-cert.pem"], check=True, capture_output=True)
    with open(f"{work}/nginx.conf", "w") as f:
        f.write(nginx_conf(work, big))
    return f"{work}/www/big"


def provision(relay_bin, data, tenant, secret_file, database_url=None):
    """Creates `tenant` with one credential in the relay's data directory (or database); writes
    the secret."""
    db = ["--database-url", database_url] if database_url else []
    def relay_cli(*a):
        return subprocess.run([relay_bin, "--data-dir", data, *db, *a], capture_output=True, text=True,
                              check=True).stdout
    relay_cli("tenant", "create", tenant)
    secret = relay_cli("tenant", "credential", "create", tenant).strip().splitlines()[-1]
    with open(secret_file, "w") as f:
        f.write(secret)


LOGS = []


def pg_bin():
    """The directory with initdb and pg_ctl (PATH, or Debian's /usr/lib/postgresql/N/bin)."""
    if shutil.which("initdb") and shutil.which("pg_ctl"):
        return os.path.dirname(shutil.which("pg_ctl"))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    return versions[-1] if versions else None


def start_postgres(work, fsync=False):
    """A throwaway PostgreSQL on a unix socket in `work` (as user postgres when run as root);
    its sqlx URL, and a function that stops it. `fsync=False` (`-F`) suits the request-path
    benchmarks, which never wait on the database; bench/queue.py measures commits and keeps it on."""
    bin_dir = pg_bin()
    if not bin_dir:
        raise SystemExit("PostgreSQL server binaries not found (apt-get install postgresql)")
    pg = f"{work}/pg"
    os.makedirs(pg)
    as_user = []
    if os.getuid() == 0:
        subprocess.run(["chown", "-R", "postgres", pg], check=True)
        as_user = ["runuser", "-u", "postgres", "--"]
    run = lambda tool, *a: subprocess.run([*as_user, f"{bin_dir}/{tool}", *a], check=True,
                                          capture_output=True)
    run("initdb", "-D", f"{pg}/data", "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C")
    run("pg_ctl", "-D", f"{pg}/data", "-l", f"{pg}/server.log", "-w", "-t", "60",
        "-o", f"-k {pg} -h ''{' -F' if not fsync else ''} -c max_connections=100", "start")
    return (f"postgres://postgres@localhost/postgres?host={pg}",
            lambda: run("pg_ctl", "-D", f"{pg}/data", "-m", "fast", "-w", "stop"))


def start(cmd, env=None, **kw):
    log_file = tempfile.TemporaryFile()
    LOGS.append((os.path.basename(cmd[0]), log_file))
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=log_file,
                            stderr=subprocess.STDOUT, start_new_session=True, **kw)


def stop_all(procs):
    """SIGTERM to each process group, then up to 40 s for each to exit before SIGKILL."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def teardown(procs, stops, work):
    """The end of a run: every process stopped (`stop_all`), then each of `stops` (PostgreSQL
    clusters) called, then the work directory removed."""
    stop_all(procs)
    for stop in stops:
        try:
            stop()
        except subprocess.CalledProcessError:
            pass
    shutil.rmtree(work, ignore_errors=True)


def dump_logs():
    for name, f in LOGS:
        f.seek(0)
        tail = f.read()[-2000:].decode(errors="replace")
        if tail.strip():
            log(f"--- {name} (last lines) ---\n{tail}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="one short round: proves the harness works")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    args = ap.parse_args()
    rounds = 1 if args.smoke else args.rounds
    duration = 2 if args.smoke else args.duration
    big = (64 << 20) if args.smoke else (1 << 30)

    work = tempfile.mkdtemp(prefix="relay-bench-")
    os.chmod(work, 0o755)  # nginx workers run as an unprivileged user
    procs = []
    stop_pg = None
    try:
        upload = write_site(work, big)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        procs.append(start([nginx, "-c", f"{work}/nginx.conf", "-p", work]))
        procs.append(start([sys.executable, os.path.join(ROOT, "bench", "sink.py"), str(PORTS["sink"])]))
        for p in ("backend", "proxy", "sink"):
            wait_port(PORTS[p])
        # Page cache: read the big file once.
        subprocess.run(["cat", upload], stdout=subprocess.DEVNULL, check=True)

        relay_bin, conn_bin = os.path.join(RELEASE, "relay-server"), os.path.join(RELEASE, "connector")
        data = f"{work}/relay-data"
        # One tenant per transport: `bench` served by a QUIC connector, `benchtcp` by a TLS-over-TCP one.
        for tenant in ("bench", "benchtcp"):
            provision(relay_bin, data, tenant, f"{work}/secret-{tenant}")
        relay = start([relay_bin, "--data-dir", data, "run", "--listen", f"127.0.0.1:{PORTS['relay']}",
                       "--listen-http", f"127.0.0.1:{PORTS['relay_http']}"],
                      env={"RELAY_LIMITS__MAX_BODY_BYTES": str(4 << 30), "RELAY_LIMITS__MAX_CONCURRENT_STREAMS": "4096",
                           # The idle test holds 1000 connections from one address (the default cap is 256).
                           "RELAY_LIMITS__MAX_CONNECTIONS_PER_IP": "4096",
                           "RUST_LOG": "warn"})
        procs.append(relay)
        wait_port(PORTS["relay_http"])
        def connector(tenant, transport):
            return start([conn_bin, "run", "--server", f"https://127.0.0.1:{PORTS['relay']}", "--tenant", tenant,
                          "--secret-file", f"{work}/secret-{tenant}", "--ca-cert", f"{data}/tls/cert.pem",
                          "--transport", transport,
                          "--target", f"app=http://127.0.0.1:{PORTS['backend']}",
                          "--target", f"sink=http://127.0.0.1:{PORTS['sink']}"], env={"RUST_LOG": "warn"})
        conn = connector("bench", "quic")
        conn_tcp = connector("benchtcp", "tcp")
        procs += [conn, conn_tcp]

        # The cluster: nodes A and B share a PostgreSQL and keys/; tenant `cluster`'s connector
        # (QUIC) is on B only.
        pg_url, stop_pg = start_postgres(work)
        cdata = f"{work}/cluster-data"
        provision(relay_bin, cdata, "cluster", f"{work}/secret-cluster", pg_url)
        nodes = {}
        for node in ("b", "a"):
            nodes[node] = start([relay_bin, "--data-dir", cdata, "--database-url", pg_url, "run",
                                 "--listen", f"127.0.0.1:{PORTS['node_' + node]}",
                                 "--listen-http", f"127.0.0.1:{PORTS['node_' + node + '_http']}"],
                                env={"RELAY_NODE_NAME": f"node-{node}", "RUST_LOG": "warn",
                                     "RELAY_LIMITS__MAX_BODY_BYTES": str(4 << 30),
                                     "RELAY_LIMITS__MAX_CONCURRENT_STREAMS": "4096",
                                     "RELAY_LIMITS__MAX_CONNECTIONS_PER_IP": "4096"})
            wait_port(PORTS[f"node_{node}_http"])
        procs += list(nodes.values())
        conn_cluster = start([conn_bin, "run", "--server", f"https://127.0.0.1:{PORTS['node_b']}",
                              "--tenant", "cluster", "--secret-file", f"{work}/secret-cluster",
                              "--ca-cert", f"{cdata}/tls/cert.pem", "--transport", "quic",
                              "--target", f"app=http://127.0.0.1:{PORTS['backend']}",
                              "--target", f"sink=http://127.0.0.1:{PORTS['sink']}"], env={"RUST_LOG": "warn"})
        procs.append(conn_cluster)
        same_base = f"http://127.0.0.1:{PORTS['node_b_http']}/relay/cluster"
        cross_base = f"http://127.0.0.1:{PORTS['node_a_http']}/relay/cluster"
        relay_base = f"http://127.0.0.1:{PORTS['relay_http']}/relay/bench"
        tcp_base = f"http://127.0.0.1:{PORTS['relay_http']}/relay/benchtcp"
        deadline = time.time() + 30
        last = None
        for base_url in (relay_base, tcp_base, same_base, cross_base):
            while True:
                try:
                    if urllib.request.urlopen(f"{base_url}/app/small", timeout=2).status == 200:
                        break
                except Exception as e:
                    last = e
                if time.time() > deadline:
                    raise SystemExit(f"the tunnel did not come up: {last}")
                time.sleep(0.2)

        def wait_http(url, timeout):
            end = time.time() + timeout
            while time.time() < end:
                try:
                    if urllib.request.urlopen(url, timeout=2).status == 200:
                        return True
                except Exception:
                    pass
                time.sleep(0.2)
            return False

        peer_paths, peer_procs, unavailable, peer_idle = peers.start_all(
            work, PEER_PORTS, PORTS["backend"], PORTS["sink"], start, wait_http, log)
        procs += peer_procs
        for name, why in unavailable.items():
            log(f"peer {name} unavailable: {why}")

        paths = {
            "direct": {"small": f"http://127.0.0.1:{PORTS['backend']}/small", "big": f"http://127.0.0.1:{PORTS['backend']}/big",
                       "upload": f"http://127.0.0.1:{PORTS['sink']}/upload", "pids": [],
                       "h2": f"https://127.0.0.1:{PORTS['backend_h2']}/small"},
            "nginx": {"small": f"http://127.0.0.1:{PORTS['proxy']}/small", "big": f"http://127.0.0.1:{PORTS['proxy']}/big",
                      "upload": f"http://127.0.0.1:{PORTS['proxy']}/upload", "pids": []},
            "relay-quic": {"small": f"{relay_base}/app/small", "big": f"{relay_base}/app/big",
                           "upload": f"{relay_base}/sink/upload", "pids": [relay.pid, conn.pid], "conn": conn.pid,
                           "h2": f"https://127.0.0.1:{PORTS['relay']}/relay/bench/app/small"},
            "relay-tcp": {"small": f"{tcp_base}/app/small", "big": f"{tcp_base}/app/big",
                          "upload": f"{tcp_base}/sink/upload", "pids": [relay.pid, conn_tcp.pid], "conn": conn_tcp.pid,
                          "h2": f"https://127.0.0.1:{PORTS['relay']}/relay/benchtcp/app/small"},
            "cluster-same": {"small": f"{same_base}/app/small", "big": f"{same_base}/app/big",
                             "upload": f"{same_base}/sink/upload", "pids": [nodes["b"].pid, conn_cluster.pid],
                             "relay": nodes["b"].pid, "conn": conn_cluster.pid},
            "cluster-cross": {"small": f"{cross_base}/app/small", "big": f"{cross_base}/app/big",
                              "upload": f"{cross_base}/sink/upload",
                              "pids": [nodes["a"].pid, nodes["b"].pid, conn_cluster.pid],
                              "relay": nodes["a"].pid, "conn": conn_cluster.pid},
            **peer_paths,
        }
        results = []
        for r in range(rounds):
            for name, p in paths.items():
                log(f"round {r + 1}/{rounds}: {name}")
                row = {"round": r + 1, "path": name}
                s = Sampler(p["pids"])
                row["c64"] = wrk(p["small"], 64, 2, duration)
                row["c1"] = wrk(p["small"], 1, 1, duration)
                row["close"] = wrk(p["small"], 64, 2, duration, close=True)
                if "h2" in p:
                    row["h2"] = h2load(p["h2"], duration)
                row["download_mib_s"] = curl_speed([p["big"]], "speed_download")
                row["upload_mib_s"] = curl_speed(["-T", upload, "-H", "Expect:", p["upload"]], "speed_upload")
                base, peak = s.finish()
                if p["pids"]:
                    rp = p.get("relay", relay.pid)
                    row["relay_rss_kib"] = {"base": base[rp], "peak": peak[rp]}
                    row["connector_rss_kib"] = {"base": base[p["conn"]], "peak": peak[p["conn"]]}
                results.append(row)
        log("idle keep-alive connections")
        idle = {"relay": idle_connections(PORTS["relay_http"], "/relay/bench/app/small", relay.pid, IDLE_CONNECTIONS)}
        for path, (port, pid) in peer_idle.items():
            idle[path] = idle_connections(port, "/small", pid, IDLE_CONNECTIONS)

        out = {
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "smoke": args.smoke,
            "rounds": rounds,
            "duration_s": duration,
            "big_bytes": big,
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1)},
            "versions": {
                "relay": subprocess.run([relay_bin, "--version"], capture_output=True, text=True).stdout.strip(),
                "nginx": subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip(),
                "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0],
                **{name: peers.version(name) for name in ("rathole", "bore") if os.path.exists(peers.binary(name))},
            },
            "unavailable": unavailable,
            "results": results,
            "idle_kib_per_connection": idle,
        }
        os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
        name = "smoke.json" if args.smoke else "latest.json"
        with open(os.path.join(ROOT, "bench", "results", name), "w") as f:
            json.dump(out, f, indent=1)
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "report.py"), os.path.join(ROOT, "bench", "results", name)],
                       check=True)
    except BaseException:
        dump_logs()
        raise
    finally:
        teardown(procs, [stop_pg] if stop_pg else [], work)


if __name__ == "__main__":
    main()
