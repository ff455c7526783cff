#!/usr/bin/env python3
"""The latency tail across restarts: gracedemo (release) pinned to core 0, the load pinned to
core 1, a new connection per request (64 at a time, `Connection: close`). Each round makes
three runs:

1. no restarts, the load from `restartload` (xtask's load generator, a separate process):
   every request timed from connect to the server's close;
2. the same with a `SIGUSR2` a second, sent by `restartload` itself to the pid in
   gracedemo's PID file. The p99 ratio is run 2's p99 over run 1's (the goal's figure); and
   within run 2, `restartload` compares the requests that started within 100 ms of a signal
   with the rest of the same run, which the host's drift between runs cannot move: the
   within-run ratio, the restart's excess slow requests, the slowest near a restart; and the
   restart latency under this load (signal → first answer from the new pid, read from the
   pids the answers name);
3. `wrk -c64 -H 'Connection: close'` with a `SIGUSR2` a second, while a prober times each
   restart from the signal to the first answer from the new pid (the restart latency). The
   prober shares core 1 as a real-time thread and wrk waits for it while it polls, so this
   run's p99 (reported) is not the p99 figure.

    cargo build --release -p gracedemo && cargo build --release -p xtask --bin restartload
    python3 xtask/scripts/restart_tail.py [--seconds 10] [--rounds 3] [--server-args=--standby]

`--server-args` adds flags to gracedemo's command line (`--standby`: the next process started
ahead and woken by the restart).

Loopback only; bounded in time; every process that served, and any standby, is killed at the
end, by pid.
"""
import argparse, os, re, signal, socket, statistics, subprocess, sys, tempfile, threading, time

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

def read_pid(path):
    """The pid in gracedemo's PID file (written by each generation once it serves)."""
    try:
        with open(path) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    SEEN.add(pid)
    return pid

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

def prober(port, pid_file, seconds, stop, latencies):
    """A `SIGUSR2` every second, to the pid in `pid_file`, until `stop`, each restart timed
    into `latencies` by probing, from core 1, for the new pid's first answer."""
    os.sched_setaffinity(0, {1})
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (PermissionError, OSError):
        pass
    for _ in range(seconds * 2):
        if stop.wait(1.0):
            break
        old = read_pid(pid_file)
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

def probed_restarts(port, pid_file, seconds, latencies):
    """wrk's figures for `seconds` while the prober restarts and times every second."""
    stop = threading.Event()
    t = threading.Thread(target=prober, args=(port, pid_file, seconds, stop, latencies))
    t.start()
    result = wrk(port, seconds)
    stop.set()
    t.join()
    settle(port, pid_file)
    return result

def settle(port, pid_file):
    """Waits (at most 5 s) until the generation answering is the one the PID file names, so
    no restart is under way when the next run starts or the processes are killed."""
    deadline = time.time() + 5
    while time.time() < deadline:
        if who(port) == read_pid(pid_file):
            return
        time.sleep(0.05)

def restartload(tool, port, seconds, pid_file=None):
    """`restartload`'s figures for `seconds` of load from core 1 (with `pid_file`, it also
    signals the pid there once a second)."""
    cmd = ["taskset", "-c", "1", tool, str(port), str(seconds)]
    if pid_file:
        cmd += ["--pid-file", pid_file]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    line = next((l for l in out.stdout.splitlines() if l.startswith("result: ")), None)
    if line is None:
        sys.exit(f"restartload printed no result: {out.stderr.strip()}")
    return {k: float(v) for k, v in (kv.split("=") for kv in line[len("result: "):].split())}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/gracedemo")
    ap.add_argument("--restartload", default=None,
                    help="the load generator (default: restartload beside --binary)")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--server-args", default="",
                    help="more flags for gracedemo, e.g. '--standby'")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds of the three runs; medians are reported")
    a = ap.parse_args()
    tool = a.restartload or os.path.join(os.path.dirname(a.binary), "restartload")
    if not os.access(tool, os.X_OK):
        sys.exit(f"{tool} not found: cargo build --release -p xtask --bin restartload")
    port = free_port()
    tmp = tempfile.TemporaryDirectory(prefix="restart_tail-")
    pid_file = os.path.join(tmp.name, "gracedemo.pid")
    server = subprocess.Popen(["taskset", "-c", "0", a.binary, "-a0", f"127.0.0.1:{port}",
                               "-a1", f"127.0.0.1:{free_port()}", "-a2", f"127.0.0.1:{free_port()}",
                               "--pid-file", pid_file, *a.server_args.split()],
                              stderr=subprocess.DEVNULL, start_new_session=True)
    SEEN.add(server.pid)
    try:
        deadline = time.time() + 20
        while who(port) is None or read_pid(pid_file) is None:
            if time.time() > deadline:
                sys.exit("gracedemo did not start")
            time.sleep(0.02)
        quiets, busies, probed, latencies = [], [], [], []
        for _ in range(a.rounds):
            quiets.append(restartload(tool, port, a.seconds))
            before = read_pid(pid_file)
            busies.append(restartload(tool, port, a.seconds, pid_file))
            settle(port, pid_file)
            if read_pid(pid_file) == before:
                sys.exit("no generation took over during the restarts")
            probed.append(probed_restarts(port, pid_file, a.seconds, latencies))
        med = lambda runs, k: statistics.median(r[k] for r in runs)
        for r in quiets:
            print(f"no restarts          : p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, max {r['max']:.2f} ms, "
                  f"{r['requests']:.0f} requests, {r['errors']:.0f} errors")
        for r in busies:
            print(f"a restart/s          : p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, max {r['max']:.2f} ms, "
                  f"{r['requests']:.0f} requests, {r['errors']:.0f} errors; {r['signals']:.0f} signals; "
                  f"p99 far from a restart {r['p99_far']:.2f} ms (within-run ratio {r['within_ratio']:.2f}), "
                  f"slowest near one {r['near_max']:.2f} ms, {r['excess_per_restart']:.0f} excess slow per restart"
                  + (f"; restart latency median {r['restart_median']:.1f} ms, max {r['restart_max']:.1f} ms"
                     if "restart_median" in r else ""))
        for r in probed:
            print(f"a restart/s, probed (wrk): p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, max {r['max']:.2f} ms, "
                  f"{r['rps']:.0f} req/s, socket errors: {r['errors']}")
        ratios = [b["p99"] / q["p99"] for q, b in zip(quiets, busies)]
        within = [b["within_ratio"] for b in busies]
        print(f"p99 ratio (restarts / none) per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.2f}")
        print(f"within-run p99 ratio per round: {', '.join(f'{r:.2f}' for r in within)}; "
              f"median {statistics.median(within):.2f}")
        errors = sum(r["errors"] for r in quiets + busies)
        result = (f"p99_quiet={med(quiets, 'p99'):.2f} "
                  f"p99_restarts={med(busies, 'p99'):.2f} "
                  f"p99_ratio={statistics.median(ratios):.2f} "
                  f"p99_ratio_range={min(ratios):.2f}-{max(ratios):.2f} "
                  f"within_ratio={statistics.median(within):.2f} "
                  f"within_ratio_range={min(within):.2f}-{max(within):.2f} "
                  f"near_max={max(b['near_max'] for b in busies):.2f} "
                  f"excess_per_restart={med(busies, 'excess_per_restart'):.0f} "
                  f"p99_probed={statistics.median(p['p99'] for p in probed):.2f} "
                  f"signals={sum(b['signals'] for b in busies):.0f} "
                  f"errors={'none' if errors == 0 and all(p['errors'] == 'none' for p in probed) else 'some'}")
        if all("restart_median" in b for b in busies):
            result += (f" load_restart_median={med(busies, 'restart_median'):.1f} "
                       f"load_restart_max={max(b['restart_max'] for b in busies):.1f}")
        if latencies:
            median, p90 = statistics.median(latencies), sorted(latencies)[int(len(latencies) * 0.9)]
            result += (f" restarts={len(latencies)} latency_median={median:.1f} "
                       f"latency_p90={p90:.1f} latency_max={max(latencies):.1f}")
            print(f"restart latency (signal -> first answer from the new pid), {len(latencies)} restarts: "
                  f"median {median:.1f} ms, p90 {p90:.1f} ms, max {max(latencies):.1f} ms")
        print("result: " + result)
    finally:
        settle(port, pid_file)
        # Each generation leads its own process group: kill every pid that served, and any
        # child one keeps (a --standby).
        children = set()
        for pid in SEEN | {server.pid}:
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    children.update(int(c) for c in f.read().split())
            except (OSError, ValueError):
                pass
        for pid in SEEN | {server.pid} | children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.wait(timeout=10)
        tmp.cleanup()

if __name__ == "__main__":
    main()
