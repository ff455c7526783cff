#!/usr/bin/env python3
"""gracedemo against the plain-hyper baseline, driven by an external load generator.

The server is pinned to core 0 and the load generator (wrk for HTTP/1.1 keep-alive, h2load
for h2c) to core 1, so the server's cost is not hidden in the client's. Rounds alternate
baseline and gracedemo, and which of them goes first alternates from round to round; each
reports requests/s (from the load generator) and server CPU per
request (utime+stime from /proc/<pid>/stat over the load). Ratios are gracedemo / baseline,
per round and as the median.

Then the same load side by side: both servers on core 0 at once, each with its own load
generator on core 1, so a change in the host's speed slows both alike. Each gets half the core;
the ratio of their CPU per request is the figure (rounds of the alternating kind range about
twice as wide on a shared host).

    cargo build --release -p xtask --bin baseline
    cargo build --release -p gracedemo    # alone, with the features a user gets
    python3 xtask/scripts/overhead.py [--rounds 5] [--seconds 5] [--mode h1|h2|both] [--threads 1]

--threads sets both servers' tokio worker threads (TOKIO_WORKER_THREADS), all on core 0.

Needs wrk and h2load (Debian: wrk, nghttp2-client) and taskset. Loopback only; each server is
killed by pid; every load is bounded in time.
"""
import argparse, os, re, signal, socket, statistics, subprocess, sys, time

from loopback import cpu_ticks, free_port, server_command

PATH = "/sleep/?duration=0s"

def start(kind, target, threads):
    port = free_port()
    args = server_command(kind, target, port)
    env = dict(os.environ, TOKIO_WORKER_THREADS=str(threads))
    p = subprocess.Popen(["taskset", "-c", "0"] + args, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, port
        except OSError:
            time.sleep(0.02)
    p.kill()
    sys.exit(f"{kind} did not start")

def load_command(mode, port, seconds, conns):
    url = f"http://127.0.0.1:{port}{PATH}"
    if mode == "h1":
        return ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", url]
    return ["taskset", "-c", "1", "h2load", "-c", str(conns), "-m", "10", "-D", str(seconds), url]

def load(mode, port, seconds, conns):
    return parse_load(mode, subprocess.run(load_command(mode, port, seconds, conns),
                                           capture_output=True, text=True,
                                           timeout=seconds + 30).stdout)

def parse_load(mode, out):
    if mode == "h1":
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        total = int(re.search(r"(\d+) requests in", out).group(1))
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
        return rps, total, errors.group(0) if errors else ""
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    total = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    failed = int(re.search(r"(\d+) failed", out).group(1))
    return rps, total, f"{failed} failed" if failed else ""

def measure(kind, mode, target, seconds, conns, threads):
    p, port = start(kind, target, threads)
    try:
        load(mode, port, 1, conns)  # warm-up
        before = cpu_ticks(p.pid)
        rps, total, errors = load(mode, port, seconds, conns)
        ticks = cpu_ticks(p.pid) - before
        hz = os.sysconf("SC_CLK_TCK")
        us_per_req = ticks / hz * 1e6 / max(total, 1)
        return rps, us_per_req, errors
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)

def side_by_side(mode, target, seconds, conns, threads):
    """Both servers loaded at once on core 0; returns gracedemo's CPU per request / baseline's."""
    servers = [start(kind, target, threads) for kind in ("baseline", "gracedemo")]
    try:
        for _, port in servers:
            load(mode, port, 1, conns)  # warm-up
        before = [cpu_ticks(p.pid) for p, _ in servers]
        runs = [subprocess.Popen(load_command(mode, port, seconds, conns), stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True) for _, port in servers]
        outs = [r.communicate(timeout=seconds + 30)[0] for r in runs]
        ticks = [cpu_ticks(p.pid) - b for (p, _), b in zip(servers, before)]
        totals = [parse_load(mode, out)[1] for out in outs]
        per_req = [t / max(n, 1) for t, n in zip(ticks, totals)]
        return per_req[1] / per_req[0]
    finally:
        for p, _ in servers:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="target/release")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--mode", default="both", choices=["h1", "h2", "both"])
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    modes = ["h1", "h2"] if a.mode == "both" else [a.mode]
    result = []
    for mode in modes:
        rps_ratio, cpu_ratio = [], []
        for r in range(a.rounds):
            # Which goes first alternates, so a host speeding up or slowing down within a round
            # favours each server in turn rather than always the second.
            if r % 2 == 0:
                b = measure("baseline", mode, a.target, a.seconds, a.connections, a.threads)
                g = measure("gracedemo", mode, a.target, a.seconds, a.connections, a.threads)
            else:
                g = measure("gracedemo", mode, a.target, a.seconds, a.connections, a.threads)
                b = measure("baseline", mode, a.target, a.seconds, a.connections, a.threads)
            rps_ratio.append(g[0] / b[0])
            cpu_ratio.append(g[1] / b[1])
            print(f"{mode} round {r + 1}: baseline {b[0]:.0f} req/s {b[1]:.2f} us/req {b[2]} | "
                  f"gracedemo {g[0]:.0f} req/s {g[1]:.2f} us/req {g[2]} | "
                  f"ratio req/s {rps_ratio[-1]:.3f} cpu/req {cpu_ratio[-1]:.3f}", flush=True)
        print(f"{mode}: median over {a.rounds} rounds: requests/s {statistics.median(rps_ratio):.3f}x "
              f"(range {min(rps_ratio):.3f}-{max(rps_ratio):.3f}), CPU per request "
              f"{statistics.median(cpu_ratio):.3f}x (range {min(cpu_ratio):.3f}-{max(cpu_ratio):.3f})")
        side = []
        for r in range(a.rounds):
            side.append(side_by_side(mode, a.target, a.seconds, a.connections, a.threads))
            print(f"{mode} side by side, round {r + 1}: CPU per request {side[-1]:.3f}x", flush=True)
        print(f"{mode}: side by side, median over {a.rounds} rounds: CPU per request "
              f"{statistics.median(side):.3f}x (range {min(side):.3f}-{max(side):.3f})")
        result += [f"{mode}_side_cpu={statistics.median(side):.3f}",
                   f"{mode}_side_cpu_range={min(side):.3f}-{max(side):.3f}"]
        result += [f"{mode}_rps={statistics.median(rps_ratio):.3f}",
                   f"{mode}_rps_range={min(rps_ratio):.3f}-{max(rps_ratio):.3f}",
                   f"{mode}_cpu={statistics.median(cpu_ratio):.3f}",
                   f"{mode}_cpu_range={min(cpu_ratio):.3f}-{max(cpu_ratio):.3f}"]
    # One line for `cargo xtask bench` to read.
    print("result: " + " ".join(result))

if __name__ == "__main__":
    main()
