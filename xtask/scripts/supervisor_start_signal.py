#!/usr/bin/env python3
"""A SIGUSR2 at a supervisor's start, over many starts (issue 29 item 7's cycle).

Each cycle starts `gracedemo --supervise` on three fresh loopback ports, polls
/proc/PID/status until SIGUSR2 is safe (blocked in the main thread, `SigBlk`, or handled,
`SigCgt`) and until it is handled, sends SIGUSR2 0-5 ms after it became safe, waits
(`--wait`, 3 s by default), checks the supervisor did not die of it, then kills every process
of that cycle by pid (`kill -9`, the supervisor first; each cycle marks its processes with an
environment variable, which every generation inherits, so one reparented away is found too)
and waits for each to be gone. Prints the times from the spawn to "safe" and to "handled" (median, p99, max), and the
deaths.

    cargo build -p gracedemo
    python3 xtask/scripts/supervisor_start_signal.py [--binary target/debug/gracedemo] [--cycles 200] [--wait 3]

Loopback only; every loop is bounded in count and time.
"""
import argparse, os, random, signal, subprocess, sys, time

SIGUSR2_BIT = 1 << (signal.SIGUSR2 - 1)
MARK = "SUPERVISOR_START_SIGNAL_CYCLE"


def masks(pid):
    """(SigBlk, SigCgt) of pid's main thread, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(l.split(":", 1) for l in f if ":" in l)
        return int(fields["SigBlk"], 16), int(fields["SigCgt"], 16)
    except (OSError, KeyError, ValueError):
        return None


def marked(value):
    """The live pids whose environment holds MARK=value."""
    needle = f"{MARK}={value}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            pass
    return found


def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def quantiles(v):
    v = sorted(v)
    p99 = v[max(0, int(len(v) * 0.99) - 1)]
    return f"median {v[len(v) // 2] * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, max {v[-1] * 1e3:.1f} ms"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/debug/gracedemo")
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--wait", type=float, default=3.0)
    args = ap.parse_args()
    limit = 10.0  # seconds any single wait may take
    safe, handled, deaths, never = [], [], 0, 0
    for i in range(args.cycles):
        value = f"{os.getpid()}-{i}"
        env = dict(os.environ, **{MARK: value})
        t0 = time.monotonic()
        sup = subprocess.Popen(
            [args.binary, "--supervise", "-a0", "127.0.0.1:0", "-a1", "127.0.0.1:0", "-a2", "127.0.0.1:0"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t_safe = t_handled = None
        while t_handled is None and time.monotonic() - t0 < limit:
            m = masks(sup.pid)
            if m is None:
                break
            now = time.monotonic() - t0
            if t_safe is None and (m[0] | m[1]) & SIGUSR2_BIT:
                t_safe = now
                time.sleep(random.uniform(0, 0.005))
                os.kill(sup.pid, signal.SIGUSR2)
            if m[1] & SIGUSR2_BIT:
                t_handled = now
            time.sleep(0.0002)
        if t_safe is None or t_handled is None:
            never += 1
            print(f"cycle {i}: SIGUSR2 safe after {t_safe}, handled after {t_handled} (s)", file=sys.stderr)
        else:
            safe.append(t_safe)
            handled.append(t_handled)
        time.sleep(args.wait)
        rc = sup.poll()
        if rc is not None and rc < 0:
            deaths += 1
            print(f"cycle {i}: the supervisor died of signal {-rc}", file=sys.stderr)
        # The supervisor first: killed after a generation, it may start another in between (a
        # crash restart), which outlives it (generations do not depend on it). Then every
        # marked process, looked for again until none is left.
        sup.kill()
        sup.wait()
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            pids = marked(value)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            while not all(gone(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            print(f"cycle {i}: processes left after {limit} s: {marked(value)}", file=sys.stderr)
    print(f"{args.cycles} cycles, {deaths} supervisor(s) died, {never} never safe or handled")
    if safe:
        print(f"spawn to SIGUSR2 safe (blocked or handled): {quantiles(safe)}")
        print(f"spawn to SIGUSR2 handler installed: {quantiles(handled)}")


if __name__ == "__main__":
    main()
