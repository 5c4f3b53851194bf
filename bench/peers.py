"""The peers the relay is compared with in the same rounds (bench/bench.py): rathole with its TLS
and plain TCP transports, and bore. Each is installed from crates.io at a pinned version into
target/peers/<name> (`cargo install --root`), and forwards TCP to the same nginx backend and upload
sink as every other path: visitor → peer server → peer's tunnel → peer client → nginx.

A peer that cannot be installed or started is reported as unavailable with the reason, never
left out silently.
"""

import os
import shutil
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_DIR = os.path.join(ROOT, "target", "peers")
# rathole 0.5.0's lockfile pins a `time` release that no longer compiles with today's Rust: it is
# installed without --locked, pinned by version.
VERSIONS = {"rathole": ("rathole", "0.5.0", False), "bore": ("bore-cli", "0.6.0", True)}
# bore's control port is fixed (bore-cli 0.6.0: 7835).
BORE_CONTROL_PORT = 7835


def binary(name):
    return os.path.join(PEERS_DIR, name, "bin", name)


def install(log):
    """Installs the pinned peers that are missing; returns {name: reason} for those that fail."""
    failed = {}
    for name, (crate, version, locked) in VERSIONS.items():
        marker = os.path.join(PEERS_DIR, name, f".version-{version}")
        if os.path.exists(binary(name)) and os.path.exists(marker):
            continue
        log(f"installing {crate} {version} into target/peers/{name} (cargo install)")
        cmd = ["cargo", "install", "--quiet", "--root", os.path.join(PEERS_DIR, name), crate, "--version", version]
        if locked:
            cmd.append("--locked")
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not os.path.exists(binary(name)):
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            failed[name] = f"cargo install {crate} {version} failed: {' / '.join(tail)}"
            continue
        open(marker, "w").close()
    return failed


def version(name):
    try:
        out = subprocess.run([binary(name), "--version"], capture_output=True, text=True, timeout=10)
        text = (out.stdout or out.stderr).strip()
        # rathole prints a build table: its "Build Version:" line has the version.
        for line in text.splitlines():
            if line.startswith("Build Version:"):
                return f"{name} {line.split(':', 1)[1].strip()}"
        return text.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return f"{name} (version unknown)"


def _tls_identity(work):
    """A CA and a server certificate for `localhost` (openssl), and the PKCS#12 identity rathole's
    native-tls server wants; returns (pkcs12 path, password, CA path)."""
    d = os.path.join(work, "rathole-tls")
    os.makedirs(d, exist_ok=True)
    run = lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")
    run("openssl", "pkcs12", "-export", "-out", "identity.pfx", "-inkey", "server.key", "-in", "server.pem",
        "-certfile", "ca.pem", "-passout", "pass:bench")
    return os.path.join(d, "identity.pfx"), "bench", os.path.join(d, "ca.pem")


def _rathole(work, name, transport, ports, backend, sink, start):
    """One rathole server and client pair with services `app` (→ backend) and `sink`."""
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    server_tls = client_tls = ""
    if transport == "tls":
        pfx, password, ca = _tls_identity(work)
        server_tls = f'[server.transport.tls]\npkcs12 = "{pfx}"\npkcs12_password = "{password}"\n'
        client_tls = f'[client.transport.tls]\ntrusted_root = "{ca}"\nhostname = "localhost"\n'
    with open(os.path.join(d, "server.toml"), "w") as f:
        f.write(f'[server]\nbind_addr = "127.0.0.1:{ports["control"]}"\n'
                f'[server.transport]\ntype = "{transport}"\n{server_tls}'
                f'[server.services.app]\ntoken = "bench-token"\nbind_addr = "127.0.0.1:{ports["app"]}"\n'
                f'[server.services.sink]\ntoken = "bench-token"\nbind_addr = "127.0.0.1:{ports["sink"]}"\n')
    with open(os.path.join(d, "client.toml"), "w") as f:
        f.write(f'[client]\nremote_addr = "localhost:{ports["control"]}"\n'
                f'[client.transport]\ntype = "{transport}"\n{client_tls}'
                f'[client.services.app]\ntoken = "bench-token"\nlocal_addr = "127.0.0.1:{backend}"\n'
                f'[client.services.sink]\ntoken = "bench-token"\nlocal_addr = "127.0.0.1:{sink}"\n')
    env = {"RUST_LOG": "warn"}
    server = start([binary("rathole"), "--server", os.path.join(d, "server.toml")], env=env)
    client = start([binary("rathole"), "--client", os.path.join(d, "client.toml")], env=env)
    return server, client, [client]


def _bore(work, ports, backend, sink, start):
    """A bore server (tunnel ports limited to ours) and one client per forwarded port."""
    env = {"RUST_LOG": "warn"}
    server = start([binary("bore"), "server", "--min-port", str(min(ports["app"], ports["sink"])),
                    "--max-port", str(max(ports["app"], ports["sink"])), "--bind-addr", "127.0.0.1"], env=env)
    time.sleep(0.3)
    clients = [start([binary("bore"), "local", str(local), "--local-host", "127.0.0.1", "--to", "127.0.0.1",
                      "--port", str(ports[service])], env=env)
               for service, local in (("app", backend), ("sink", sink))]
    return server, clients[0], clients


def start_all(work, ports, backend, sink, start, wait_http, log):
    """Starts every installed peer. Returns (paths for bench.py, processes, {name: reason} of the
    peers that are unavailable, {path: server port} for the idle-memory test)."""
    unavailable = install(log)
    paths, procs, idle_ports = {}, [], {}
    plan = [("rathole-tls", "rathole", lambda: _rathole(work, "rathole-tls", "tls", ports["rathole-tls"], backend,
                                                         sink, start)),
            ("rathole-tcp", "rathole", lambda: _rathole(work, "rathole-tcp", "tcp", ports["rathole-tcp"], backend,
                                                        sink, start)),
            ("bore", "bore", lambda: _bore(work, ports["bore"], backend, sink, start))]
    for path, peer, launch in plan:
        if peer in unavailable:
            unavailable[path] = unavailable[peer]
            continue
        try:
            server, client, started = launch()
        except (OSError, subprocess.CalledProcessError) as e:
            unavailable[path] = f"did not start: {e}"
            continue
        procs += [server] + started
        base = f"http://127.0.0.1:{ports[path]['app']}"
        if not wait_http(f"{base}/small", 30):
            unavailable[path] = "its tunnel did not answer within 30 s"
            continue
        paths[path] = {"small": f"{base}/small", "big": f"{base}/big",
                       "upload": f"http://127.0.0.1:{ports[path]['sink']}/upload",
                       "pids": [server.pid] + [c.pid for c in started], "relay": server.pid, "conn": client.pid}
        idle_ports[path] = (ports[path]["app"], server.pid)
    for name in ("rathole", "bore"):
        unavailable.pop(name, None)
    return paths, procs, unavailable, idle_ports


def have_build_tools():
    """rathole's TLS transport links OpenSSL (native-tls): pkg-config and libssl-dev."""
    return shutil.which("pkg-config") is not None and os.path.exists("/usr/include/openssl/ssl.h")
