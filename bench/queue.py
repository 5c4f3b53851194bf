"""The queue-mode benchmark (issue 16): how fast the relay accepts and delivers queued requests,
with the physical limit of its store measured beside it in the same run.

Per store (SQLite, PostgreSQL) and round, in this order:
- accept: the release relay with the tenant's connector offline; wrk POSTs 1 KiB bodies to
  /queue/bench/app/in over 16 connections for D seconds on the plain-HTTP ingress, so every
  message is committed and waits (messages/s = accepted 202s / D);
- deliver: then the connector starts (target `app` = an nginx that answers 200 to anything); the
  time from its start to the first and to the last delivery (relay_queue_delivered_total on
  /metrics, polled every 50 ms) gives messages/s;
- limit: the same 1 KiB payload inserted and committed by a bare loop with 16 concurrent clients
  into the relay's own table (the 0010_queue.sql migration, applied to a fresh database): on
  PostgreSQL `pgbench -c16 -M prepared` with a one-INSERT script, on SQLite 16 Python threads doing
  BEGIN IMMEDIATE; INSERT; COMMIT with the relay's pragmas (WAL, synchronous = NORMAL,
  busy_timeout 5 s), and one thread alone (the serial commit rate, for comparison). On PostgreSQL
  also the same INSERT with `NOTIFY relay_queue` in its transaction (a diagnostic: commits of
  notifying transactions are serialised, which is why the relay notifies after its commit).

Each round starts from an empty database. PostgreSQL is a throwaway cluster on a unix socket with
fsync on (its default; `--pg-fsync off` for a CPU-only comparison): a 202 is only worth something
once the commit is on disk. SQLite's synchronous = NORMAL does not sync each commit, so there both
sides are bound by CPU and the write lock. Results go to bench/results/queue.json
(queue-smoke.json with --smoke); bench/report.py adds a "Queue mode" section to the benchmarks page.

Usage: python3 bench/queue.py [--smoke] [--rounds N] [--duration SECONDS] [--store sqlite|postgres|both]
                              [--pg-fsync on|off] [--perf DIR]

`--perf DIR` records the relay with `perf record -g` during the first accept run of each store
(DIR/{store}-accept.data, for `perf report -i`).
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import RELEASE, ROOT, log, pg_bin, provision, start_postgres, wait_port  # noqa: E402

PORTS = {"relay": 18700, "relay_http": 18701, "admin": 18702, "backend": 18703}
BODY_BYTES = 1024
CONCURRENCY = 16
TENANT = "bench"
MIGRATION = {"sqlite": os.path.join(ROOT, "migrations", "sqlite", "0010_queue.sql"),
             "postgres": os.path.join(ROOT, "migrations", "postgres", "0010_queue.sql")}
# What a stored request's headers look like when the relay's own are not at hand (they are read
# from the round's database when they are).
HEADERS_FALLBACK = json.dumps([
    {"n": "host", "v": f"127.0.0.1:{PORTS['relay_http']}"},
    {"n": "content-type", "v": "application/octet-stream"},
    {"n": "content-length", "v": str(BODY_BYTES)},
    {"n": "x-forwarded-for", "v": "127.0.0.1"},
    {"n": "x-forwarded-proto", "v": "http"},
    {"n": "x-forwarded-host", "v": f"127.0.0.1:{PORTS['relay_http']}"},
    {"n": "forwarded", "v": f"for=127.0.0.1;proto=http;host=\"127.0.0.1:{PORTS['relay_http']}\""},
    {"n": "x-relay-request-id", "v": "0193a7b2c3d4e5f60718293a4b5c6d7e"},
], separators=(",", ":"))


def nginx_conf(work):
    """A backend that answers 200 to every method and path (the body is read and discarded)."""
    return f"""
worker_processes 1;
daemon off;
error_log {work}/nginx-error.log warn;
pid {work}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{PORTS['backend']} backlog=4096;
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
}}
"""


def start(cmd, log_path, env=None):
    """A process in its own group, its output appended to `log_path`."""
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=open(log_path, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc, timeout=40):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def cpu_s(pid):
    """User + system CPU seconds of `pid` so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def postgres_cpu_s():
    """User + system CPU seconds of every live PostgreSQL process (the server's backends)."""
    out = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True).stdout.split()
    return sum(cpu_s(int(p)) for p in out)


class Metrics:
    """The relay's /metrics on its admin listener (an API token is required)."""

    def __init__(self, token):
        self.url = f"http://127.0.0.1:{PORTS['admin']}/metrics"
        self.token = token

    def read(self):
        req = urllib.request.Request(self.url, headers={"Authorization": f"Bearer {self.token}"})
        text = urllib.request.urlopen(req, timeout=5).read().decode()
        out = {}
        for name, value in re.findall(r"^(relay_queue_\w+)(?:\{[^}]*\})?\s+([\d.eE+-]+)$", text, re.M):
            out[name] = out.get(name, 0) + float(value)
        return out

    def counter(self, name):
        return int(self.read().get(name, 0))


class Sampler:
    """relay_queue_accepted_total once a second while wrk runs: the accept rate over time (the
    queue grows during the run)."""

    def __init__(self, metrics):
        self.metrics, self.samples, self.stop = metrics, [], False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                self.samples.append((time.time(), self.metrics.counter("relay_queue_accepted_total")))
            except OSError:
                pass
            time.sleep(1.0)

    def finish(self):
        self.stop = True
        self.t.join()
        s = self.samples
        return [round((b[1] - a[1]) / (b[0] - a[0])) for a, b in zip(s, s[1:]) if b[0] > a[0]]


def settled(metrics, name):
    """A counter once it has stopped moving for half a second (wrk's last requests may still be
    committing when it exits)."""
    last, since = metrics.counter(name), time.time()
    while time.time() - since < 0.5:
        time.sleep(0.1)
        now = metrics.counter(name)
        if now != last:
            last, since = now, time.time()
    return last


def third_rate(curve, total, which):
    """Messages/s while the `which`-th third (0, 1, 2) of `total` messages was delivered."""
    lo, hi = total * which // 3, total * (which + 1) // 3
    t_lo = next((t for t, n in curve if n >= max(lo, 1)), None)
    t_hi = next((t for t, n in curve if n >= hi), None)
    if t_lo is None or t_hi is None or t_hi <= t_lo:
        return None
    return round((hi - max(lo, 1)) / (t_hi - t_lo))


def wrk_post(url, duration, script):
    out = subprocess.run(["wrk", "-t2", f"-c{CONCURRENCY}", f"-d{duration}s", "--latency", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
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
    return {"rps": rps, "requests": total, "p50_us": lat.get("50"), "p99_us": lat.get("99"), "errors": errors}


class Postgres:
    """The throwaway cluster: one database per round for the relay and one for the limit."""

    def __init__(self, work, fsync):
        self.url, self.stop = start_postgres(work, fsync=fsync)
        self.sock = f"{work}/pg"

    def url_for(self, db):
        return self.url.replace("/postgres?", f"/{db}?")

    def psql(self, db, sql=None, file=None):
        cmd = ["psql", "-h", self.sock, "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-Atq"]
        cmd += ["-f", file] if file else ["-c", sql]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def one_accept(url):
    """One queued POST, checked before the load starts (a refusal would make wrk's figure void)."""
    req = urllib.request.Request(url, data=b"x" * BODY_BYTES, method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    try:
        resp = urllib.request.urlopen(req, timeout=10)
    except urllib.error.HTTPError as e:
        raise SystemExit(f"queue accept answered {e.code}: {e.read()[:500]!r}")
    if resp.status != 202 or not resp.headers.get("x-relay-message-id"):
        raise SystemExit(f"queue accept answered {resp.status} without a message id")


PERF_DIR = None


def relay_round(store, rnd, work, pg, duration, script, relay_bin, conn_bin):
    """Accept with the connector offline, then deliver; returns the figures and a stored row's
    headers (for the limit's INSERT)."""
    data = f"{work}/{store}-r{rnd}"
    db_url = None
    if store == "postgres":
        pg.psql("postgres", f"CREATE DATABASE relay_r{rnd}")
        db_url = pg.url_for(f"relay_r{rnd}")
    provision(relay_bin, data, TENANT, f"{data}.secret", db_url)
    db = ["--database-url", db_url] if db_url else []
    token = subprocess.run([relay_bin, "--data-dir", data, *db, "admin", "token", "create", "bench"],
                           capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    metrics = Metrics(token)
    relay_log = f"{work}/{store}-r{rnd}-relay.log"
    relay = start([relay_bin, "--data-dir", data, *db, "run", "--listen", f"127.0.0.1:{PORTS['relay']}",
                   "--listen-http", f"127.0.0.1:{PORTS['relay_http']}", "--admin", f"127.0.0.1:{PORTS['admin']}"],
                  relay_log,
                  env={"RUST_LOG": "warn",
                       # The run must not hit the default quotas (100 000 messages, 1 GiB per tenant).
                       "RELAY_QUEUE__MAX_MESSAGES": "100000000", "RELAY_QUEUE__MAX_BYTES": str(1 << 40)})
    conn = None
    try:
        wait_port(PORTS["relay_http"])
        wait_port(PORTS["admin"])
        url = f"http://127.0.0.1:{PORTS['relay_http']}/queue/{TENANT}/app/in"
        one_accept(url)
        log(f"{store} round {rnd}: accept, connector offline, {duration} s")
        cpu0 = cpu_s(relay.pid)
        pg0 = postgres_cpu_s()
        sampler = Sampler(metrics)
        # `--perf DIR`: a CPU profile of the relay while it accepts (perf report -i DIR/...).
        perf = None
        if PERF_DIR and rnd == 1:
            perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", f"{PERF_DIR}/{store}-accept.data",
                                     "-p", str(relay.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        acc = wrk_post(url, duration, script)
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=60)
        pg_cpu = postgres_cpu_s() - pg0
        acc["per_second"] = sampler.finish()
        accepted = settled(metrics, "relay_queue_accepted_total")
        acc["accepted"] = accepted
        acc["relay_cpu_us_per_message"] = round((cpu_s(relay.pid) - cpu0) * 1e6 / max(accepted, 1))
        if store == "postgres":
            acc["postgres_cpu_us_per_message"] = round(pg_cpu * 1e6 / max(accepted, 1))
        acc["messages_per_s"] = round((accepted - 1) / duration, 1)
        if acc["errors"]:
            log(f"  {acc['errors']} requests were not accepted")
        log(f"  {acc['messages_per_s']:.0f} messages/s accepted ({accepted} in all), per second: {acc['per_second']}")
        log(f"  CPU per accept: relay {acc['relay_cpu_us_per_message']} µs"
            + (f", PostgreSQL {acc['postgres_cpu_us_per_message']} µs" if store == "postgres" else ""))

        log(f"{store} round {rnd}: deliver {accepted} messages")
        cpu0 = cpu_s(relay.pid)
        t0 = time.time()
        conn = start([conn_bin, "run", "--server", f"https://127.0.0.1:{PORTS['relay']}", "--tenant", TENANT,
                      "--secret-file", f"{data}.secret", "--ca-cert", f"{data}/tls/cert.pem",
                      "--target", f"app=http://127.0.0.1:{PORTS['backend']}"],
                     f"{work}/{store}-r{rnd}-connector.log", env={"RUST_LOG": "warn"})
        first = None
        deadline = t0 + 120 + accepted / 20
        delivered = 0
        curve = []  # (time, delivered so far)
        while time.time() < deadline:
            delivered = metrics.counter("relay_queue_delivered_total")
            now = time.time()
            curve.append((now, delivered))
            if delivered and first is None:
                first = now
            if delivered >= accepted:
                break
            time.sleep(0.05)
        done = time.time()
        m = metrics.read()
        if delivered < accepted:
            raise SystemExit(f"only {delivered} of {accepted} messages delivered within {deadline - t0:.0f} s")
        span = max(done - (first or t0), 1e-3)
        dlv = {"messages": accepted, "first_s": round((first or done) - t0, 3), "all_s": round(done - t0, 3),
               "messages_per_s": round(accepted / span, 1),
               "relay_cpu_us_per_message": round((cpu_s(relay.pid) - cpu0) * 1e6 / accepted),
               "connector_cpu_us_per_message": round(cpu_s(conn.pid) * 1e6 / accepted),
               # Does the rate depend on the queue's depth? The first third of the messages against the last.
               "first_third_per_s": third_rate(curve, accepted, 0), "last_third_per_s": third_rate(curve, accepted, 2),
               "retries": int(m.get("relay_queue_retries_total", 0)),
               "failed": int(m.get("relay_queue_failed_total", 0))}
        log(f"  first after {dlv['first_s']:.2f} s, all after {dlv['all_s']:.2f} s: "
            f"{dlv['messages_per_s']:.0f} messages/s (first third {dlv['first_third_per_s']}/s, last third "
            f"{dlv['last_third_per_s']}/s; {dlv['retries']} retries, {dlv['failed']} failed)")
        # Cross-check in the store, and a stored row's headers for the limit's INSERT.
        if store == "sqlite":
            with sqlite3.connect(f"file:{data}/relay.db?mode=ro", uri=True) as c:
                in_store = c.execute("SELECT COUNT(*) FROM queue_messages WHERE state = 'delivered'").fetchone()[0]
                headers = c.execute("SELECT headers FROM queue_messages ORDER BY seq DESC LIMIT 1").fetchone()[0]
        else:
            in_store = int(pg.psql(f"relay_r{rnd}", "SELECT COUNT(*) FROM queue_messages WHERE state = 'delivered'"))
            headers = pg.psql(f"relay_r{rnd}", "SELECT headers FROM queue_messages ORDER BY seq DESC LIMIT 1")
        dlv["delivered_in_store"] = in_store
        return acc, dlv, headers or HEADERS_FALLBACK
    except BaseException:
        for path in (relay_log, f"{work}/{store}-r{rnd}-connector.log"):
            if os.path.exists(path):
                tail = open(path, "rb").read()[-2000:].decode(errors="replace")
                if tail.strip():
                    log(f"--- {os.path.basename(path)} (last lines) ---\n{tail}")
        raise
    finally:
        stop(conn)
        stop(relay)


def insert_sql(id_expr, headers, body):
    """The relay's INSERT (the columns `Store::enqueue` writes), with the given placeholders."""
    return ("INSERT INTO queue_messages (id, tenant_id, tenant, target, method, path, headers, body, body_bytes, "
            "idempotency_key, state, created_at, expires_at, next_attempt_at) VALUES "
            f"({id_expr}, 'bench-tenant-id', '{TENANT}', 'app', 'POST', '/in', {headers}, {body}, {BODY_BYTES}, "
            "NULL, 'queued', 1765000000000, 1765086400000, 1765000000000)")


def limit_postgres(pg, rnd, duration, headers, work, notify=False):
    """pgbench, 16 clients, one INSERT per transaction into a fresh copy of the relay's table.
    Headers and body are bind parameters (-M prepared), as the relay sends them. With `notify`
    the transaction also sends `NOTIFY relay_queue` as the relay's accept does (a diagnostic:
    PostgreSQL serialises the commits of notifying transactions)."""
    db = f"limit_r{rnd}{'_notify' if notify else ''}"
    pg.psql("postgres", f"CREATE DATABASE {db}")
    pg.psql(db, file=MIGRATION["postgres"])
    # md5 of the client, a random number and the clock: 32 hex digits, like the relay's ids.
    # (No `::` casts and no literal colons: pgbench reads `:name` as a variable.)
    id_expr = ("md5(CAST(:client_id AS text) || '-' || CAST(:n AS text) || '-' || "
               "CAST(clock_timestamp() AS text))")
    script = f"{work}/{db}.sql"
    with open(script, "w") as f:
        f.write("\\set n random(1, 1000000000)\n")
        if notify:
            f.write("BEGIN;\n" + insert_sql(id_expr, ":headers", ":body") + ";\n"
                    "SELECT pg_notify('relay_queue', 'bench-tenant-id');\nCOMMIT;\n")
        else:
            f.write(insert_sql(id_expr, ":headers", ":body") + ";\n")
    bindir = pg_bin()
    pgbench = os.path.join(bindir, "pgbench") if bindir and os.path.exists(os.path.join(bindir, "pgbench")) \
        else shutil.which("pgbench")
    out = subprocess.run([pgbench, "-n", "-M", "prepared", "-c", str(CONCURRENCY), "-j", "2", "-T", str(duration),
                          "-D", f"headers={headers}", "-D", "body=\\x" + "78" * BODY_BYTES,
                          "-f", script, "-h", pg.sock, "-U", "postgres", db],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{out.stdout}\n{out.stderr}")
    tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    rows = int(pg.psql(db, "SELECT COUNT(*) FROM queue_messages"))
    body_len = int(pg.psql(db, "SELECT length(body) FROM queue_messages LIMIT 1") or 0)
    if body_len != BODY_BYTES:
        raise SystemExit(f"pgbench stored bodies of {body_len} bytes, not {BODY_BYTES}")
    return {"messages_per_s": round(tps, 1), "rows": rows, "failed": int(failed.group(1)) if failed else 0,
            "tool": "pgbench -M prepared" + (", with NOTIFY" if notify else "")}


def limit_sqlite(rnd, duration, headers, work, clients):
    """`clients` threads, each with its own connection (the relay's pragmas), committing one
    INSERT per transaction for `duration` seconds."""
    path = f"{work}/limit-r{rnd}-c{clients}.db"
    with sqlite3.connect(path) as c:
        c.executescript(open(MIGRATION["sqlite"]).read())
    sql = insert_sql("?", "?", "?")
    body = b"x" * BODY_BYTES
    counts = [0] * clients
    errors = [0] * clients
    start_at = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker(i):
        c = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        c.executescript("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; "
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
        n = 0
        start_at.wait()
        while time.time() < stop_at[0]:
            try:
                c.execute("BEGIN IMMEDIATE")
                c.execute(sql, (os.urandom(16).hex(), headers, body))
                c.execute("COMMIT")
                n += 1
            except sqlite3.OperationalError:
                errors[i] += 1
                try:
                    c.execute("ROLLBACK")
                except sqlite3.OperationalError:
                    pass
        counts[i] = n
        c.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.time() + duration
    t0 = time.time()
    start_at.wait()
    for t in threads:
        t.join()
    elapsed = time.time() - t0
    total = sum(counts)
    with sqlite3.connect(path) as c:
        rows = c.execute("SELECT COUNT(*) FROM queue_messages").fetchone()[0]
    return {"messages_per_s": round(total / elapsed, 1), "rows": rows, "failed": sum(errors),
            "tool": f"python sqlite3, {clients} thread(s)"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="one short round per store: proves the harness works")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds of accepting, and of each limit run")
    ap.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    ap.add_argument("--pg-fsync", choices=("on", "off"), default="on")
    ap.add_argument("--perf", metavar="DIR", help="record a perf profile of the relay's first accept run per store")
    args = ap.parse_args()
    global PERF_DIR
    PERF_DIR = args.perf and os.path.abspath(args.perf)
    rounds = 1 if args.smoke else args.rounds
    duration = 3 if args.smoke else args.duration
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    relay_bin, conn_bin = os.path.join(RELEASE, "relay-server"), os.path.join(RELEASE, "connector")
    for b in (relay_bin, conn_bin):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"{b} is missing: run bench/run.sh --queue (it builds the release binaries)")

    work = tempfile.mkdtemp(prefix="relay-queue-bench-")
    os.chmod(work, 0o755)  # nginx workers and PostgreSQL run as other users
    nginx = None
    pg = None
    try:
        with open(f"{work}/nginx.conf", "w") as f:
            f.write(nginx_conf(work))
        nginx = start([shutil.which("nginx") or "/usr/sbin/nginx", "-c", f"{work}/nginx.conf", "-p", work],
                      f"{work}/nginx.log")
        wait_port(PORTS["backend"])
        script = f"{work}/post.lua"
        with open(script, "w") as f:
            f.write('wrk.method = "POST"\n'
                    f'wrk.body = string.rep("x", {BODY_BYTES})\n'
                    'wrk.headers["Content-Type"] = "application/octet-stream"\n')
        if "postgres" in stores:
            pg = Postgres(work, args.pg_fsync == "on")
        results = []
        # Interleaved: per round and store, the relay's figures and then the limit.
        for rnd in range(1, rounds + 1):
            for store in stores:
                acc, dlv, headers = relay_round(store, rnd, work, pg, duration, script, relay_bin, conn_bin)
                log(f"{store} round {rnd}: limit, {CONCURRENCY} clients, {duration} s")
                if store == "postgres":
                    limit = limit_postgres(pg, rnd, duration, headers, work)
                    serial = None
                    notify = limit_postgres(pg, rnd, duration, headers, work, notify=True)
                    log(f"  the same with NOTIFY relay_queue in each transaction: {notify['messages_per_s']:.0f}/s")
                else:
                    limit = limit_sqlite(rnd, duration, headers, work, CONCURRENCY)
                    serial = limit_sqlite(rnd, duration, headers, work, 1)
                log(f"  limit {limit['messages_per_s']:.0f} messages/s"
                    + (f" ({serial['messages_per_s']:.0f} with one writer)" if serial else "")
                    + f": accept is {acc['messages_per_s'] / max(limit['messages_per_s'], 1e-9):.2f}× the limit")
                row = {"round": rnd, "store": store, "accept": acc, "deliver": dlv, "limit": limit}
                if serial:
                    row["limit_one_writer"] = serial
                if store == "postgres":
                    row["limit_with_notify"] = notify
                results.append(row)

        def version(cmd):
            try:
                r = subprocess.run(cmd, capture_output=True, text=True)
                return (r.stdout or r.stderr).strip().splitlines()[0]
            except (OSError, IndexError):
                return None

        out = {
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "smoke": args.smoke,
            "rounds": rounds,
            "duration_s": duration,
            "body_bytes": BODY_BYTES,
            "concurrency": CONCURRENCY,
            "pg_fsync": args.pg_fsync,
            "sqlite_synchronous": "NORMAL",
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1)},
            "versions": {
                "relay": version([relay_bin, "--version"]),
                "wrk": version(["wrk", "-v"]),
                "postgres": version([os.path.join(pg_bin() or "/usr/bin", "postgres"), "--version"]) if pg else None,
                "python_sqlite": sqlite3.sqlite_version,
            },
            "results": results,
        }
        os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
        name = "queue-smoke.json" if args.smoke else "queue.json"
        with open(os.path.join(ROOT, "bench", "results", name), "w") as f:
            json.dump(out, f, indent=1)
        for store in stores:
            rows = [r for r in results if r["store"] == store]
            acc = statistics.median(r["accept"]["messages_per_s"] for r in rows)
            lim = statistics.median(r["limit"]["messages_per_s"] for r in rows)
            dlv = statistics.median(r["deliver"]["messages_per_s"] for r in rows)
            log(f"{store}: accept {acc:.0f}/s, limit {lim:.0f}/s ({acc / lim:.2f}×), deliver {dlv:.0f}/s (medians)")
        print(os.path.join("bench", "results", name))
    finally:
        stop(nginx)
        if pg:
            try:
                pg.stop()
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
