#!/usr/bin/env python3
"""What two server processes on one core cost, with no cluster code at all: the control for
the cluster's CPU per new connection (BENCHMARKS.md, "The cluster").

Three kinds, in alternating order each round, each on core 0 with wrk on core 1, 8 clients
opening a connection per request (`Connection: close`):
- one gracedemo process with one runtime thread;
- one gracedemo process with two runtime threads (the cluster benchmark's baseline);
- two separate gracedemo processes (one runtime thread each, no --workers), each given 4 of
  the 8 clients by its own wrk.
CPU per request is utime + stime of the server processes from /proc over the load; prints
each round, the medians, and one `result:` line last.

    cargo build --release -p gracedemo
    python3 xtask/scripts/shared_core.py [--rounds 4] [--seconds 5]

Needs wrk and taskset. Loopback only; every server is killed by pid at the end of its round;
every load is bounded in time.
"""
import argparse, os, re, statistics, subprocess, sys, time

from loopback import answers, cpu_ticks, free_port, server_command

TARGET = os.path.join(os.path.dirname(__file__), "../../target/release")
PATH = "/sleep/?duration=0s"


def start(threads):
    port = free_port()
    p = subprocess.Popen(["taskset", "-c", "0"] + server_command("gracedemo", TARGET, port),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, TOKIO_WORKER_THREADS=str(threads)))
    deadline = time.time() + 20
    while time.time() < deadline:
        if answers(port):
            return p, port
        time.sleep(0.05)
    p.kill()
    p.wait()
    sys.exit("gracedemo did not start")


def load(ports, conns, seconds):
    """wrk on core 1 against each port at once; the requests all of them made."""
    wrks = [subprocess.Popen(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s",
                              "-H", "Connection: close", f"http://127.0.0.1:{port}{PATH}"],
                             stdout=subprocess.PIPE, text=True) for port in ports]
    total = 0
    for w in wrks:
        out = w.communicate(timeout=seconds + 30)[0]
        total += int(re.search(r"(\d+) requests in", out).group(1))
    return total


def measure(kind, seconds):
    threads, processes = {"one_1_thread": (1, 1), "one_2_threads": (2, 1), "two_processes": (1, 2)}[kind]
    servers = [start(threads) for _ in range(processes)]
    try:
        ports = [port for _, port in servers]
        conns = 8 // processes
        load(ports, conns, 1)  # warm-up
        before = sum(cpu_ticks(p.pid) for p, _ in servers)
        total = load(ports, conns, seconds)
        ticks = sum(cpu_ticks(p.pid) for p, _ in servers) - before
        return ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(total, 1)
    finally:
        for p, _ in servers:
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=5)
    a = ap.parse_args()
    kinds = ["one_1_thread", "one_2_threads", "two_processes"]
    got = {k: [] for k in kinds}
    for r in range(a.rounds):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            got[kind].append(measure(kind, a.seconds))
            print(f"round {r + 1}: {kind} {got[kind][-1]:.1f} us/req", flush=True)
    med = {k: statistics.median(v) for k, v in got.items()}
    print("result: " + " ".join(f"{k}_us={v:.1f}" for k, v in med.items())
          + f" two_processes_ratio={med['two_processes'] / med['one_2_threads']:.3f}")


if __name__ == "__main__":
    main()
