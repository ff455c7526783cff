#!/usr/bin/env python3
"""The latency tail across restarts, with an external load generator: gracedemo (release)
pinned to core 0, `wrk -c64 -H 'Connection: close'` (a new connection per request) pinned to
core 1, first without restarts, then with a `SIGUSR2` every second. Reports wrk's p50/p99/max
for both, and for each restart the time from the signal to the first answer from the new pid.

    cargo build --release -p gracedemo
    python3 xtask/scripts/restart_tail.py [--seconds 10] [--rounds 3]

Loopback only; bounded in time; every process that answered is killed at the end, by pid.
"""
import argparse, os, re, signal, socket, statistics, subprocess, sys, threading, time

from loopback import ask_once, free_port

SEEN = set()

def who(port):
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=2)
        data = ask_once(c)
        c.close()
        m = re.search(rb"from pid (\d+)", data)
        if m:
            SEEN.add(int(m.group(1)))
        return int(m.group(1)) if m else None
    except OSError:
        return None

def wrk(port, seconds):
    url = f"http://127.0.0.1:{port}/sleep/?duration=0s"
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds}s", "--latency",
                          "-H", "Connection: close", url], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    def ms(label):
        m = re.search(label + r"\s+([\d.]+)(us|ms|s)", out)
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v * 1000 if u == "s" else v
    maxm = re.search(r"Latency\s+[\d.]+\w+\s+[\d.]+\w+\s+([\d.]+)(us|ms|s)", out)
    mx = float(maxm.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[maxm.group(2)]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Socket errors: (.*)", out)
    return {"p50": ms("50%"), "p99": ms("99%"), "max": mx, "rps": rps,
            "errors": errors.group(1) if errors else "none"}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/gracedemo")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1,
                    help="quiet and restarting runs alternate this many times; medians are reported")
    a = ap.parse_args()
    port = free_port()
    server = subprocess.Popen(["taskset", "-c", "0", a.binary, "-a0", f"127.0.0.1:{port}",
                               "-a1", f"127.0.0.1:{free_port()}", "-a2", f"127.0.0.1:{free_port()}"],
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 20
        while who(port) is None:
            if time.time() > deadline:
                sys.exit("gracedemo did not start")
            time.sleep(0.02)
        quiets, busies, latencies = [], [], []
        for _ in range(a.rounds):
            quiets.append(wrk(port, a.seconds))
            stop = threading.Event()
            def restarter():
                os.sched_setaffinity(0, {1})
                # The prober shares core 1 with wrk: as a real-time thread (when allowed) its
                # own scheduling delay stays out of the restart latency it measures.
                try:
                    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
                except (PermissionError, OSError):
                    pass
                for _ in range(a.seconds * 2):
                    if stop.wait(1.0):
                        return
                    old = who(port)
                    if old is None:
                        continue
                    t0 = time.monotonic()
                    os.kill(old, signal.SIGUSR2)
                    while time.monotonic() - t0 < 5:
                        p = who(port)
                        if p is not None and p != old:
                            latencies.append((time.monotonic() - t0) * 1000)
                            break
                        time.sleep(0.0002)  # leaves core 1 to wrk between probes
            t = threading.Thread(target=restarter)
            t.start()
            busies.append(wrk(port, a.seconds))
            stop.set()
            t.join()
        for label, runs in (("no restarts", quiets), ("a restart/s", busies)):
            for r in runs:
                print(f"{label} : p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, max {r['max']:.2f} ms, "
                      f"{r['rps']:.0f} req/s, socket errors: {r['errors']}")
        ratios = [b["p99"] / q["p99"] for q, b in zip(quiets, busies)]
        print(f"p99 ratio (restarts / none) per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.2f}")
        print(f"p99: median {statistics.median(q['p99'] for q in quiets):.2f} ms without restarts, "
              f"{statistics.median(b['p99'] for b in busies):.2f} ms with a restart a second")
        result = (f"p99_quiet={statistics.median(q['p99'] for q in quiets):.2f} "
                  f"p99_restarts={statistics.median(b['p99'] for b in busies):.2f} "
                  f"p99_ratio={statistics.median(ratios):.2f} "
                  f"p99_ratio_range={min(ratios):.2f}-{max(ratios):.2f} "
                  f"errors={'none' if all(r['errors'] == 'none' for r in quiets + busies) else 'some'}")
        if latencies:
            median, p90 = statistics.median(latencies), sorted(latencies)[int(len(latencies) * 0.9)]
            result += (f" restarts={len(latencies)} latency_median={median:.1f} "
                       f"latency_p90={p90:.1f} latency_max={max(latencies):.1f}")
            print(f"restart latency (signal -> first answer from the new pid), {len(latencies)} restarts: "
                  f"median {median:.1f} ms, p90 {p90:.1f} ms, max {max(latencies):.1f} ms")
        print("result: " + result)
    finally:
        # Each generation leads its own process group: kill every pid that answered.
        for pid in SEEN | {server.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.wait(timeout=10)

if __name__ == "__main__":
    main()
