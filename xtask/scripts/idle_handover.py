#!/usr/bin/env python3
"""What handing idle keep-alive connections over costs busy clients: `gracedemo --supervise`
(pinned to core 0) holds N idle keep-alive connections (each has made one request) while
`wrk -t1 -c64 --latency` (pinned to core 1) loads it, once with no restart and once with a
`SIGUSR2` every second. It prints wrk's p99 for both and their ratio, for each N, and checks
that every idle connection still answers afterwards: nothing lost.

    cargo build --release -p gracedemo
    python3 xtask/scripts/idle_handover.py [--idle 0,500,2000,5000] [--seconds 5] [--rounds 2]
        [--binary target/release/gracedemo]

`--binary` picks the gracedemo to measure (an older build, to compare). Rounds alternate the
two runs, so a noisy moment of the machine hits both. Loopback only; bounded in time; every
gracedemo process is killed at the end, by pid.
"""
import argparse, os, re, resource, signal, socket, subprocess, sys, threading, time

REQUEST = b"GET /sleep/?duration=0s HTTP/1.1\r\nHost: bench\r\n\r\n"


def answered_by(sock):
    """The pid a response on `sock` names, or None when the connection closed."""
    data = b""
    while b"pid" not in data or not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            return None
        data += chunk
    m = re.search(rb"pid (\d+)", data)
    return int(m.group(1)) if m else None


def start(binary):
    p = subprocess.Popen(["taskset", "-c", "0", binary, "--supervise", "-a0", "127.0.0.1:0",
                          "-a1", "127.0.0.1:0", "-a2", "127.0.0.1:0"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines, cond = [], threading.Condition()

    def read():
        for line in p.stderr:
            with cond:
                lines.append(line.rstrip())
                cond.notify_all()
    threading.Thread(target=read, daemon=True).start()
    deadline = time.time() + 20
    with cond:
        while True:
            for line in lines:
                m = re.search(r"Serving 127\.0\.0\.1:(\d+)", line)
                if m:
                    return p, int(m.group(1))
            left = deadline - time.time()
            if left <= 0:
                p.kill()
                p.wait()
                sys.exit("gracedemo did not say it serves within 20 s")
            cond.wait(left)


def p99_ms(out):
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return float(m.group(1)) * scale


def run(binary, idle, seconds, restart):
    p, port = start(binary)
    socks = []
    try:
        for _ in range(idle):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(REQUEST)
            socks.append(s)
        for s in socks:
            if answered_by(s) is None:
                sys.exit("an idle connection closed before the run")
        wrk = subprocess.Popen(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds}s", "--latency",
                                f"http://127.0.0.1:{port}/sleep/?duration=0s"],
                               stdout=subprocess.PIPE, text=True)
        restarts = 0
        if restart:
            for _ in range(seconds - 1):
                time.sleep(1)
                os.kill(p.pid, signal.SIGUSR2)
                restarts += 1
        out, _ = wrk.communicate(timeout=seconds + 60)
        # The last restart's hand-over ends well within this.
        time.sleep(1.5)
        lost = 0
        for s in socks:
            try:
                s.sendall(REQUEST)
                lost += answered_by(s) is None
            except OSError:
                lost += 1
        errors = re.findall(r"Non-2xx or 3xx responses: \d+|Socket errors: .*", out)
        return p99_ms(out), restarts, lost, "; ".join(errors) or "none"
    finally:
        for s in socks:
            s.close()
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", default="0,500,2000,5000")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--binary", default="target/release/gracedemo")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(int(n) for n in a.idle.split(",")) + 1000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    print(f"{a.binary} --supervise on core 0; wrk -t1 -c64 keep-alive on core 1, {a.seconds} s per run")
    print(f"{'idle':>6} {'round':>5} {'p99 no restart':>15} {'p99 SIGUSR2/s':>14} {'ratio':>6}  idle lost  wrk errors")
    for idle in (int(n) for n in a.idle.split(",")):
        for r in range(a.rounds):
            base, _, lost0, err0 = run(a.binary, idle, a.seconds, False)
            busy, restarts, lost1, err1 = run(a.binary, idle, a.seconds, True)
            print(f"{idle:>6} {r + 1:>5} {base:>13.2f}ms {busy:>12.2f}ms {busy / base:>5.2f}x"
                  f"  {lost0 + lost1:>9}  {err0} / {err1} ({restarts} restarts)")


if __name__ == "__main__":
    main()
