#!/usr/bin/env python3
"""Footprint and draining CPU of gracedemo with N connections.

Starts the release gracedemo (pinned to core 0) and reads its RSS idle. Then N keep-alive
connections each make one request and stay open, idle: RSS again. They close; N new ones each
send one `/sleep/?duration=60s` request; once the server holds them all, its CPU
(utime+stime from /proc/<pid>/stat) is measured over a few seconds while it serves them, then
again after SIGTERM while it drains. CPU is a percentage of one core.

    cargo build --release -p gracedemo
    python3 xtask/scripts/drain_cpu.py [--binary target/release/gracedemo] [--connections 10000]

Loopback only; every wait has a deadline; the server is killed by pid at the end.
"""
import argparse, os, resource, signal, socket, subprocess, sys, time

from loopback import cpu_ticks, free_port

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/gracedemo")
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=4.0)
    a = ap.parse_args()
    need = a.connections + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, need)), hard))
    hz = os.sysconf("SC_CLK_TCK")
    ports = [free_port() for _ in range(3)]
    args = ["taskset", "-c", "0", a.binary]
    for i, p in enumerate(ports):
        args += [f"-a{i}", f"127.0.0.1:{p}"]
    server = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    conns = []
    try:
        deadline = time.time() + 20
        for line in server.stderr:
            if "Serving" in line:
                break
            if time.time() > deadline:
                sys.exit("the server did not start")
        base_fds = fd_count(server.pid)
        time.sleep(0.5)  # settled: the startup's transient allocations are gone
        rss_idle = rss_kib(server.pid)
        quick = b"GET /sleep/?duration=0s HTTP/1.1\r\nHost: localhost\r\n\r\n"
        for i in range(a.connections):
            c = socket.create_connection(("127.0.0.1", ports[i % 3]), timeout=10)
            c.sendall(quick)
            conns.append(c)
        for c in conns:
            got = b""
            while not got.endswith(b".\n"):  # the body ends "from pid N.\n"
                chunk = c.recv(4096)
                if not chunk:
                    sys.exit("a keep-alive connection was closed before its answer")
                got += chunk
        time.sleep(0.5)
        if fd_count(server.pid) - base_fds < a.connections:
            sys.exit(f"the server holds {fd_count(server.pid) - base_fds} of {a.connections} idle connections")
        rss_idle_conns = rss_kib(server.pid)
        for c in conns:
            c.close()
        conns = []
        deadline = time.time() + 30
        while fd_count(server.pid) > base_fds + 10 and time.time() < deadline:
            time.sleep(0.1)
        req = b"GET /sleep/?duration=60s HTTP/1.1\r\nHost: localhost\r\n\r\n"
        for i in range(a.connections):
            c = socket.create_connection(("127.0.0.1", ports[0]), timeout=10)
            c.sendall(req)
            conns.append(c)
        deadline = time.time() + 60
        while fd_count(server.pid) < base_fds + a.connections:
            if time.time() > deadline:
                sys.exit(f"the server holds {fd_count(server.pid) - base_fds} of {a.connections} connections")
            time.sleep(0.1)
        def measure():
            t0, c0 = time.time(), cpu_ticks(server.pid)
            time.sleep(a.seconds)
            return 100.0 * (cpu_ticks(server.pid) - c0) / hz / (time.time() - t0)
        serving = measure()
        server.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # let the drain begin: listeners close, idle connections go
        draining = measure()
        print(f"binary={a.binary} connections={a.connections} rss_idle={rss_idle} KiB "
              f"rss_with_idle_connections={rss_idle_conns} KiB "
              f"serving_cpu={serving:.1f}% draining_cpu={draining:.1f}% (of one core)")
        print(f"result: connections={a.connections} rss_idle_kib={rss_idle} rss_idle_connections_kib={rss_idle_conns} "
              f"serving_cpu={serving:.1f} draining_cpu={draining:.1f}")
    finally:
        server.kill()
        server.wait()
        for c in conns:
            c.close()

if __name__ == "__main__":
    main()
