#!/usr/bin/env python3
"""TCP connections opened by keep-alive clients across restarts: gracedemo (pinned to core 0)
under `wrk -t1 -c64` (pinned to core 1) for a fixed time, once with no restart and once with
ten `SIGUSR2`s spread over the run (each sent once the previous new process serves). With
keep-alive connections handed to the new process, the server accepts the 64 connections wrk
opens and no more; without (each client told `Connection: close` at a restart), every client
reconnects after every restart.

The count is the kernel's: the run happens in a network namespace of its own (`unshare -n`,
as root), whose TCP `PassiveOpens` counter (/proc/net/snmp) counts the connections the server
accepted, and nothing else's.

    cargo build --release -p gracedemo
    python3 xtask/scripts/keepalive_wrk.py [--seconds 20] [--restarts 10] [--connections 64]
        [--binary target/release/gracedemo]

`--binary` picks the gracedemo to measure (an older build, to compare). Loopback only; bounded
in time; every gracedemo process that served is killed at the end, by pid.
"""
import argparse, os, re, signal, subprocess, sys, threading, time

def passive_opens():
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("PassiveOpens")])

def start(binary):
    p = subprocess.Popen(["taskset", "-c", "0", binary, "-a0", "127.0.0.1:0", "-a1", "127.0.0.1:0",
                          "-a2", "127.0.0.1:0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    lines = []
    cond = threading.Condition()
    def read():
        for line in p.stderr:
            with cond:
                lines.append(line.rstrip())
                cond.notify_all()
    threading.Thread(target=read, daemon=True).start()
    def expect(pattern, timeout=20):
        deadline = time.time() + timeout
        with cond:
            seen = 0
            while True:
                for line in lines[seen:]:
                    m = re.search(pattern, line)
                    if m:
                        lines.remove(line)
                        return m
                seen = len(lines)
                left = deadline - time.time()
                if left <= 0:
                    sys.exit(f"no line matching {pattern!r} within {timeout} s")
                cond.wait(left)
    m = expect(r"Serving 127\.0\.0\.1:(\d+)")
    return p, int(m.group(1)), expect

def run(binary, seconds, restarts, connections):
    p, port, expect = start(binary)
    pids = [p.pid]
    try:
        url = f"http://127.0.0.1:{port}/sleep/?duration=0s"
        before = passive_opens()
        wrk = subprocess.Popen(["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                                url],
                               stdout=subprocess.PIPE, text=True)
        for i in range(restarts):
            # Spread evenly over the run: one every 1/(n+1) of it.
            time.sleep(seconds / (restarts + 1))
            os.kill(pids[-1], signal.SIGUSR2)
            m = expect(r"with new pid (\d+) and old pid")
            pids.append(int(m.group(1)))
        out, _ = wrk.communicate(timeout=seconds + 60)
        opened = passive_opens() - before
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()
    total = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.findall(r"Non-2xx or 3xx responses: \d+|Socket errors: .*", out)
    return opened, total, rps, "; ".join(errors) or "none"

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--binary", default="target/release/gracedemo")
    ap.add_argument("--restarts", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not a.in_namespace:
        # Again, in a network namespace of its own: its counters are this run's alone.
        args = [sys.executable, __file__, "--in-namespace", "--seconds", str(a.seconds),
                "--binary", os.path.abspath(a.binary), "--restarts", str(a.restarts),
                "--connections", str(a.connections)]
        sys.exit(subprocess.run(["unshare", "-n", "--"] + args).returncode)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    print(f"{a.binary}: wrk -t1 -c{a.connections} -d{a.seconds}s, gracedemo on core 0, wrk on core 1")
    print(f"{'restarts':>8} {'connections accepted':>21} {'requests':>9} {'req/s':>9}  errors")
    for restarts in (0, a.restarts):
        opened, total, rps, errors = run(a.binary, a.seconds, restarts, a.connections)
        print(f"{restarts:>8} {opened:>21} {total:>9} {rps:>9.0f}  {errors}")

if __name__ == "__main__":
    main()
