"""The connector-session benchmark: many sessions on one relay, then a restart storm.

Starts the release relay-server, provisions tenants with `session-sim provision`, opens N
authenticated QUIC sessions from one `session-sim run` process (one UDP socket), and measures:
- the relay's RSS per session once all are up (RSS with N sessions minus RSS before, over N);
- after a graceful restart of the relay (SIGTERM, start again on the same port and data), how
  long until all N sessions are back, and the relay's peak RSS during that reconnect storm.
Results go to bench/results/sessions.json (bench/report.py adds them to docs/benchmarks.md).

Usage: python3 bench/sessions.py [--sessions N] [--tenants T] [--smoke]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import RELEASE, ROOT, Sampler, log, rss_kib, wait_port  # noqa: E402

PORT = 18543


class Sim:
    """`session-sim run`, with its latest `up` count read from its output."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     start_new_session=True)
        self.up = 0
        self.failed = 0
        self.t = threading.Thread(target=self.read, daemon=True)
        self.t.start()

    def read(self):
        for line in self.proc.stdout:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            self.up, self.failed = row["up"], row["failed"]

    def wait_up(self, n, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.up >= n:
                return True
            time.sleep(0.05)
        return False


def start_relay(relay_bin, data):
    # BENCH_RELAY_STDERR=FILE keeps the relay's log (its own variables all start with RELAY_).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return subprocess.Popen(
        [relay_bin, "--data-dir", data, "run", "--listen", f"127.0.0.1:{PORT}"],
        env={**env, "RUST_LOG": os.environ.get("BENCH_RELAY_RUST_LOG", "warn"),
             # Every session comes from 127.0.0.1 here.
             "RELAY_LIMITS__MAX_CONNECTIONS_PER_IP": "100000",
             "RELAY_TUNNEL__MAX_PENDING_HANDSHAKES": "4096"},
        stdout=subprocess.DEVNULL, stderr=open(os.environ.get("BENCH_RELAY_STDERR", os.devnull), "a"), start_new_session=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--tenants", type=int, default=100)
    ap.add_argument("--smoke", action="store_true", help="200 sessions: proves the harness works")
    args = ap.parse_args()
    n = 200 if args.smoke else args.sessions
    tenants = min(args.tenants, n)
    relay_bin = os.path.join(RELEASE, "relay-server")
    sim_bin = os.path.join(RELEASE, "session-sim")
    work = tempfile.mkdtemp(prefix="relay-sessions-")
    data = f"{work}/relay-data"
    relay = start_relay(relay_bin, data)
    sim = None
    try:
        wait_port(PORT)
        out = subprocess.run([sim_bin, "provision", "--database-url", f"sqlite://{data}/relay.db",
                              "--data-dir", data, "--tenants", str(tenants)],
                             capture_output=True, text=True, check=True).stdout
        with open(f"{work}/creds", "w") as f:
            f.write(out)
        time.sleep(1.5)  # the relay's revision poll picks the new tenants up
        idle_rss = rss_kib(relay.pid)
        log(f"opening {n} sessions ({tenants} tenants)")
        t0 = time.time()
        sim = Sim([sim_bin, "run", "--server", f"127.0.0.1:{PORT}", "--ca-cert", f"{data}/tls/cert.pem",
                   "--creds", f"{work}/creds", "--sessions", str(n), "--duration", "600"])
        if not sim.wait_up(n, 180):
            raise SystemExit(f"only {sim.up} of {n} sessions came up ({sim.failed} failed attempts)")
        ramp_s = time.time() - t0
        time.sleep(3)  # let allocations settle
        loaded_rss = rss_kib(relay.pid)
        per_session = (loaded_rss - idle_rss) / n
        log(f"{n} sessions up in {ramp_s:.1f} s; relay RSS {idle_rss} → {loaded_rss} KiB ({per_session:.1f} KiB/session)")

        log("graceful restart of the relay")
        t_stop = time.time()
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=60)
        stopped_s = time.time() - t_stop
        relay = start_relay(relay_bin, data)
        t_start = time.time()
        sampler = Sampler([relay.pid])
        back = sim.wait_up(n, 300)
        back_s = time.time() - t_start
        _, peak = sampler.finish()
        if not back:
            raise SystemExit(f"only {sim.up} of {n} sessions came back within 300 s")
        time.sleep(3)
        after_rss = rss_kib(relay.pid)
        log(f"all {n} back {back_s:.1f} s after the relay started; peak RSS {peak[relay.pid]} KiB")
        result = {
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "smoke": args.smoke,
            "sessions": n,
            "tenants": tenants,
            "ramp_s": round(ramp_s, 2),
            "relay_rss_idle_kib": idle_rss,
            "relay_rss_loaded_kib": loaded_rss,
            "relay_kib_per_session": round(per_session, 2),
            "shutdown_s": round(stopped_s, 2),
            "all_back_s": round(back_s, 2),
            "storm_peak_rss_kib": peak[relay.pid],
            "rss_after_storm_kib": after_rss,
            "failed_attempts": sim.failed,
        }
        os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
        name = "sessions-smoke.json" if args.smoke else "sessions.json"
        with open(os.path.join(ROOT, "bench", "results", name), "w") as f:
            json.dump(result, f, indent=2)
        print(json.dumps(result, indent=2))
    finally:
        if sim:
            sim.proc.kill()
        relay.kill()
        relay.wait()


if __name__ == "__main__":
    main()
