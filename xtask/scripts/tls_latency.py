#!/usr/bin/env python3
"""New TLS connections against gracedemo (release) pinned to core 0; the clients run on core 1.

Three measures, each a new connection per request (connect → whole answer of one
`Connection: close` request), with TCP_NODELAY as browsers, curl and wrk set it:
  - full handshakes (a new client each time) and resumed ones (one client offering the session
    its last connection was given): p50 and p99, sequential, Python's `ssl` (OpenSSL);
  - many clients: `--clients` clients taking turns, each offering its own last session; how
    many resumed on their second turn (a server that keeps sessions in a bounded cache stops
    resuming once the clients outnumber it); then `SIGUSR2`, and each client once more: how
    many resumed with the new process;
  - with wrk (when installed): one connection at a time for 3 s, wrk resuming each; the time
    per connection (1 / its rate) and the server's CPU per connection from /proc.

`--other 'COMMAND'` measures another server the same way, in alternating rounds: COMMAND is
split on spaces, `{port}`, `{cert}` and `{key}` replaced (the same P-256 certificate is given to
both, made with the `openssl` command), e.g. a Go server built by hand:

    cargo build --release -p gracedemo
    python3 xtask/scripts/tls_latency.py [--count 500] [--other '/tmp/gograce -cert {cert} -key {key} -a0 127.0.0.1:{port}']

Loopback only; bounded; every server is killed by pid at the end.
"""
import argparse, os, re, shutil, signal, socket, ssl, statistics, subprocess, sys, tempfile, time

from loopback import ask_once, cpu_ticks, free_port

def one(port, ctx, session=None):
    t0 = time.perf_counter()
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    data = ask_once(s, host=b"localhost")
    elapsed = time.perf_counter() - t0
    reused = s.session_reused
    new_session = s.session
    s.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:40]
    return elapsed * 1000, reused, new_session

def pid_of(port, ctx):
    """The pid the answer names ("... from pid N."), or None."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        found = re.search(rb"from pid (\d+)", ask_once(s, host=b"localhost"))
    return int(found.group(1)) if found else None

def restarted(server, port, ctx, pids):
    """SIGUSR2 to the serving pid; waits (20 s at most) for answers from a new one."""
    old = pid_of(port, ctx)
    os.kill(old, signal.SIGUSR2)
    deadline = time.time() + 20
    while time.time() < deadline:
        new = pid_of(port, ctx)
        if new not in (None, old):
            pids.add(new)
            return True
        time.sleep(0.01)
    return False

def take_turns(port, ctx, sessions):
    """Each client connects once, offering its last session; how many resumed."""
    resumed = 0
    for i in range(len(sessions)):
        _, reused, sessions[i] = one(port, ctx, sessions[i])
        resumed += reused
    return resumed

def q(xs, p):
    return sorted(xs)[int(len(xs) * p)]

def wait_answering(port, ctx):
    deadline = time.time() + 20
    while True:
        try:
            one(port, ctx)
            return
        except OSError:
            if time.time() > deadline:
                sys.exit(f"the server on port {port} did not start")
            time.sleep(0.05)

def wrk_per_connection(port, pid, seconds=3):
    """wrk, one connection at a time: (ms per connection, server CPU µs per connection)."""
    if not shutil.which("wrk"):
        return None
    before = cpu_ticks(pid)
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c1", f"-d{seconds}s",
                          "-H", "Connection: close", f"https://127.0.0.1:{port}/sleep/?duration=0s"],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    used = (cpu_ticks(pid) - before) / os.sysconf("SC_CLK_TCK")
    done = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Socket errors.*|Non-2xx.*", out)
    if not done or int(done.group(1)) == 0 or errors:
        sys.exit(f"wrk against port {port} failed:\n{out}")
    n = int(done.group(1))
    return seconds * 1000 / n, used * 1e6 / n

def measure(command, ctx, count, clients):
    port = free_port()
    argv = [part.replace("{port}", str(port)) for part in command(port)]
    if not shutil.which(argv[0]):
        sys.exit(f"cannot start the server: {argv[0]!r} is not an executable file")
    server = subprocess.Popen(["taskset", "-c", "0"] + argv,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = {server.pid}
    try:
        wait_answering(port, ctx)
        full = [one(port, ctx)[0] for _ in range(count)]
        resumed, reused_count, session = [], 0, None
        for _ in range(count):
            ms, reused, session = one(port, ctx, session)
            resumed.append(ms)
            reused_count += reused
        sessions = [None] * clients
        take_turns(port, ctx, sessions)
        many_reused = take_turns(port, ctx, sessions)
        r = dict(full_p50=statistics.median(full), full_p99=q(full, 0.99),
                 resumed_p50=statistics.median(resumed), resumed_p99=q(resumed, 0.99),
                 resumed=reused_count, count=count,
                 clients=clients, clients_resumed=many_reused)
        w = wrk_per_connection(port, server.pid)
        if w:
            r["wrk_conn_ms"], r["wrk_cpu_us"] = w
        # A restart, then each client once more: do the sessions outlive the process?
        if not restarted(server, port, ctx, pids):
            sys.exit(f"no new process answered on port {port} within 20 s of SIGUSR2")
        r["after_restart_resumed"] = take_turns(port, ctx, sessions)
        return r
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.wait(timeout=10)

def fmt(r):
    return " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/gracedemo")
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--clients", type=int, default=400)
    ap.add_argument("--other", help="another server's command: {port}, {cert}, {key} replaced")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds with --other")
    a = ap.parse_args()
    if a.other and not shutil.which(a.other.split()[0]):
        sys.exit(f"--other: {a.other.split()[0]!r} is not an executable file")
    os.sched_setaffinity(0, {1})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    with tempfile.TemporaryDirectory(prefix="tls-latency-") as tmp:
        if a.other:
            cert, key = f"{tmp}/cert.pem", f"{tmp}/key.pem"
            made = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                                   "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                                   "-days", "2", "-subj", "/CN=localhost",
                                   "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                                  capture_output=True, text=True)
            if made.returncode != 0:
                sys.exit(f"--other needs a certificate from the openssl command: {made.stderr}")
            tls = ["--tls-cert", cert, "--tls-key", key]
        else:
            tls = ["--tls-self-signed"]
        def ours(port):
            a1, a2 = free_port(), free_port()
            return [a.binary, *tls, "-a0", f"127.0.0.1:{port}",
                    "-a1", f"127.0.0.1:{a1}", "-a2", f"127.0.0.1:{a2}"]
        def theirs(port):
            return [p.replace("{cert}", cert).replace("{key}", key) for p in a.other.split()]
        rounds = a.rounds if a.other else 1
        results = {"gracedemo": [], "other": []}
        for _ in range(rounds):
            results["gracedemo"].append(measure(ours, ctx, a.count, a.clients))
            print("gracedemo:", fmt(results["gracedemo"][-1]), flush=True)
            if a.other:
                results["other"].append(measure(theirs, ctx, a.count, a.clients))
                print("other:    ", fmt(results["other"][-1]), flush=True)
    # The median round of each key, for the one line `cargo xtask bench` reads.
    summary = lambda rs: {k: statistics.median(r[k] for r in rs) if isinstance(rs[0][k], float)
                          else rs[len(rs) // 2][k] for k in rs[0]}
    ours_r = summary(results["gracedemo"])
    print(f"full handshakes: p50 {ours_r['full_p50']:.3f} ms, p99 {ours_r['full_p99']:.3f} ms; "
          f"resumption offered: p50 {ours_r['resumed_p50']:.3f} ms ({ours_r['resumed']} of {a.count} resumed); "
          f"{a.clients} clients taking turns: {ours_r['clients_resumed']} resumed; "
          f"after a restart: {ours_r['after_restart_resumed']} resumed")
    result = dict(ours_r)
    if a.other:
        theirs_r = summary(results["other"])
        ratios = {k: ours_r[k] / theirs_r[k] for k in ("full_p50", "resumed_p50", "wrk_conn_ms", "wrk_cpu_us")
                  if k in ours_r and k in theirs_r and theirs_r[k]}
        print("other: ", fmt(theirs_r))
        print("ratio (gracedemo / other):", fmt(ratios))
        result.update({f"other_{k}": v for k, v in theirs_r.items()})
        result.update({f"ratio_{k}": v for k, v in ratios.items()})
    print("result:", fmt(result))

if __name__ == "__main__":
    main()
