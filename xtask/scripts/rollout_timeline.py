#!/usr/bin/env python3
"""Where a rolling restart's slow requests are: `gracedemo --workers 2` on core 0, 8 clients
opening a connection per request on core 1 (newconn_load.c, built here with `cc`, which every
machine that links Rust has), in pairs of 8 s runs, without and with a rolling restart every
2 s (asked on the control socket from here), the order alternating. Prints each run's p99, the
pair's ratio, and how many of the run's 1 % slowest requests began within a rollout (from
20 ms before it was asked to 300 ms after it answered) against the share of the run's time
those windows cover: if the rollouts made the tail, the first would be far above the second.

    cargo build --release -p gracedemo
    python3 xtask/scripts/rollout_timeline.py [--pairs 3]

Needs taskset and cc. Loopback only; the cluster is killed by pid at the end of each run; every
load is bounded in time.
"""
import argparse, os, statistics, subprocess, sys, tempfile, time

import cluster as C

HERE = os.path.dirname(os.path.abspath(__file__))


def build(tmp):
    exe = os.path.join(tmp, "newconn_load")
    subprocess.run(["cc", "-O2", "-pthread", "-o", exe, os.path.join(HERE, "newconn_load.c")], check=True)
    return exe


def run(exe, tmp, restarts, seconds=8):
    control = os.path.join(tmp, "control")
    p, port = C.start(2, 1, control)
    out = os.path.join(tmp, "latencies")
    marks = []
    try:
        C.wrk(port, 1, 8, True)  # warm-up
        load = subprocess.Popen(["taskset", "-c", "1", exe, str(port), "8", str(seconds), out])
        t0 = time.time()
        # A rolling restart every 2 s, the last one at least 1.5 s before the load ends.
        while restarts and time.time() - t0 + 2 < seconds - 1.5:
            time.sleep(max(0.0, t0 + 2 * (len(marks) + 1) - time.time()))
            asked = time.monotonic_ns()
            answer = C.control_request(control, "restart")
            marks.append((asked, time.monotonic_ns(), answer.startswith("ok")))
        load.wait(timeout=seconds + 30)
    finally:
        C.stop(p)
    lat = [tuple(map(int, line.split())) for line in open(out)]
    ok = sorted(l for _, l in lat if l > 0)
    p99 = ok[int(len(ok) * 0.99)]
    slow = [s for s, l in lat if l > p99]
    windows = [(a - 20_000_000, b + 300_000_000) for a, b, _ in marks]
    in_windows = sum(1 for s in slow if any(lo <= s < hi for lo, hi in windows))
    span = max(s for s, _ in lat) - min(s for s, _ in lat)
    covered = sum(hi - lo for lo, hi in windows) / span if span else 0
    failed = sum(1 for _, l in lat if l < 0)
    return {"p99_ms": p99 / 1e6, "requests": len(lat), "failed": failed, "restarts": len(marks),
            "restarts_ok": sum(1 for m in marks if m[2]), "slow_in_rollouts": in_windows / max(len(slow), 1),
            "rollout_time": covered}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="grace-rollout-")
    exe = build(tmp)
    ratios = []
    for i in range(a.pairs):
        got = {}
        for restarts in ([False, True] if i % 2 == 0 else [True, False]):
            got[restarts] = run(exe, tmp, restarts)
        w, wo = got[True], got[False]
        ratios.append(w["p99_ms"] / wo["p99_ms"])
        print(f"pair {i + 1}: p99 {w['p99_ms']:.2f} ms with {w['restarts']} rolling restarts "
              f"({w['restarts_ok']} ok, {w['failed']} failed requests), {wo['p99_ms']:.2f} ms without; "
              f"of the 1 % slowest, {100 * w['slow_in_rollouts']:.0f} % began in a rollout, "
              f"which covers {100 * w['rollout_time']:.0f} % of the run", flush=True)
    print(f"result: rollout_p99_ratio={statistics.median(ratios):.3f} "
          f"range={min(ratios):.2f}-{max(ratios):.2f}")


if __name__ == "__main__":
    sys.exit(main())
