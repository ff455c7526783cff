#!/usr/bin/env python3
"""Draining CPU: how much of a core a stopping gracedemo burns while N slow requests finish.

Starts the release gracedemo (pinned to core 0), opens N connections that each send one
`/sleep/?duration=60s` request, waits until the server holds them all, measures the server's
CPU (utime+stime from /proc/<pid>/stat) over a few seconds while it serves them, then sends
SIGTERM and measures again while it drains. Prints both as a percentage of one core.

    cargo build --release -p gracedemo
    python3 xtask/scripts/drain_cpu.py [--binary target/release/gracedemo] [--connections 10000]

Loopback only; every wait has a deadline; the server is killed by pid at the end.
"""
import argparse, os, resource, signal, socket, subprocess, sys, time

def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (after the state field)

def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

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
        print(f"binary={a.binary} connections={a.connections} "
              f"serving_cpu={serving:.1f}% draining_cpu={draining:.1f}% (of one core)")
    finally:
        server.kill()
        server.wait()
        for c in conns:
            c.close()

if __name__ == "__main__":
    main()
