#!/usr/bin/env python3
"""What an operator's scrape shows across restarts, and how long each restart takes.

Starts gracehttp's Prometheus example (`metrics-app`, built by the tests crate), then sends
SIGUSR2 N times; after each, waits until a new pid answers `/` and scrapes `/metrics` on the
same port: the new generation must show `grace_generation` N+1 and
`grace_restarts_total{result="handed_over"}` N (the restarts it came from). Prints the new
generations' own start-to-ready times (`grace_startup_duration_seconds`) and the time from the
signal to the new pid answering, as a client sees it.

    cargo build -p grace-tests --bin metrics-app
    python3 xtask/scripts/restart_metrics.py [--binary target/debug/metrics-app] [--restarts 50]

Loopback only; every wait has a deadline; this script is every generation's subreaper, reaps
them, and stops the last one with SIGTERM (SIGKILL after a deadline).
"""
import argparse, ctypes, os, re, signal, statistics, subprocess, threading, time, urllib.request

PR_SET_CHILD_SUBREAPER = 36
DEADLINE = 20.0


def sample(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise SystemExit(f"no {series} in:\n{text}")


def reap():
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/debug/metrics-app")
    ap.add_argument("--restarts", type=int, default=50)
    args = ap.parse_args()
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    app = subprocess.Popen([args.binary, "127.0.0.1:0"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    # Generations after the first write to the same pipe: read on, so it never fills.
    line = next(l for l in app.stdout if l.startswith("listening on"))
    threading.Thread(target=lambda: [None for _ in app.stdout], daemon=True).start()
    port = int(re.search(r":(\d+) \(pid", line).group(1))
    get = lambda path: urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read().decode()
    pid, startup, gaps = app.pid, [], []
    try:
        for i in range(args.restarts):
            began = time.monotonic()
            os.kill(pid, signal.SIGUSR2)
            while True:
                new = int(re.search(r"pid (\d+)", get("/")).group(1))
                if new != pid:
                    break
                if time.monotonic() - began > DEADLINE:
                    raise SystemExit(f"restart {i + 1}: no new pid within {DEADLINE} s")
                time.sleep(0.005)
            gaps.append(time.monotonic() - began)
            pid = new
            text = get("/metrics")
            assert sample(text, "grace_generation") == i + 2, text
            assert sample(text, 'grace_restarts_total{result="handed_over"}') == i + 1, text
            startup.append(sample(text, "grace_startup_duration_seconds_sum"))
            reap()
    finally:
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            reap()
            time.sleep(0.01)
        else:
            os.kill(pid, signal.SIGKILL)
        reap()
    ms = lambda xs: f"min {min(xs) * 1000:.1f} ms, median {statistics.median(xs) * 1000:.1f} ms, max {max(xs) * 1000:.1f} ms"
    print(f"{args.restarts} restarts; after each, the scrape showed generation N+1 and handed_over N")
    print("grace_startup_duration_seconds (each new generation, start to ready):", ms(startup))
    print("SIGUSR2 to the new pid answering (a client's view):", ms(gaps))


if __name__ == "__main__":
    main()
