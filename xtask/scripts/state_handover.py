#!/usr/bin/env python3
"""Hand-over time for a large state (grace-rs issue 33): gracehttp's store example holding
`--mib` MiB of items (1 MiB each, POSTed), restarted by SIGUSR2 `--restarts` times.

Each restart hands the state twice: the snapshot, taken at the SIGUSR2 and loaded by the new
process before it serves, and the final state, taken once the old process has drained and
merged by the new one after. Times come from the moment each output line is read here
(the processes share one stdout pipe):

- restart: SIGUSR2 sent -> the new process's "Graceful handoff" line (it has decoded the
  snapshot and serves);
- snapshot: SIGUSR2 sent -> the old process's "handed the state over" (taken, encoded,
  written: the new process has read most of it, as a socket buffer holds little);
- final: the old process's "stopped accepting" -> the new process's "merged the final state"
  (drain end, the provider again, the bytes, decoding and merging).

Then checks every item is still there (`GET /items` count).

    cargo build --release -p gracehttp --features axum --example store
    python3 xtask/scripts/state_handover.py [--binary target/release/examples/store] [--mib 64] [--restarts 3]

Loopback only; every loop is bounded in count and time; every process started is killed by
pid at the end (each run marks its processes with an environment variable that every
generation inherits).
"""
import argparse, http.client, json, os, queue, signal, socket, subprocess, sys, threading, time

MARK = "STATE_HANDOVER_RUN"
DEADLINE = 120.0


def marked(value):
    """The live pids whose environment holds MARK=value."""
    needle = f"{MARK}={value}".encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.append(int(name))
            except OSError:
                pass
    return found


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        conn.request(method, path, body=body, headers={"Connection": "close"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class Output:
    """The processes' output, each line stamped with when it was read."""

    def __init__(self, stream):
        self.lines = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for raw in stream:
            self.lines.put((time.monotonic(), raw.decode(errors="replace")))

    def wait(self, needle, timeout=DEADLINE):
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                sys.exit(f"no line containing {needle!r} within {timeout:.0f} s")
            try:
                at, line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if needle in line:
                return at, line


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default="target/release/examples/store")
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--restarts", type=int, default=3)
    args = ap.parse_args()
    port, run = free_port(), f"{os.getpid()}-{time.time_ns()}"
    env = dict(os.environ, **{MARK: run, "NO_COLOR": "1"})
    proc = subprocess.Popen(
        [args.binary, f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    out = Output(proc.stdout)
    try:
        out.wait("store on ")
        item = b"x" * (1024 * 1024)
        for _ in range(args.mib):
            status, body = call(port, "POST", "/items", item)
            assert status == 201, (status, body)
        count = json.loads(call(port, "GET", "/items")[1])["count"]
        pid = proc.pid
        rows = []
        for n in range(args.restarts):
            sent = time.monotonic()
            os.kill(pid, signal.SIGUSR2)
            snap_at, snap = out.wait("handed the state over bytes=")
            ready_at, _ = out.wait("Graceful handoff")
            stopped_at, _ = out.wait("stopped accepting")
            merged_at, _ = out.wait("merged the final state")
            answer = json.loads(call(port, "GET", "/items")[1])
            assert answer["count"] == count, (answer, count)
            assert answer["pid"] != pid, answer
            pid = answer["pid"]
            state_bytes = int(snap.split("bytes=")[1].split(" ")[0])
            rows.append((ready_at - sent, snap_at - sent, merged_at - stopped_at))
            print(
                f"restart {n + 1}: {state_bytes / 2**20:.1f} MiB of state; restart {1000 * (ready_at - sent):.0f} ms, "
                f"snapshot handed {1000 * (snap_at - sent):.0f} ms, final state merged "
                f"{1000 * (merged_at - stopped_at):.0f} ms after the drain ended",
                flush=True,
            )
        for name, i in (("restart", 0), ("snapshot", 1), ("final", 2)):
            v = sorted(r[i] for r in rows)
            print(f"{name}: median {1000 * v[len(v) // 2]:.0f} ms, max {1000 * v[-1]:.0f} ms")
        print(f"{count} items ({args.mib} MiB) kept across {args.restarts} restarts")
    finally:
        for p in [proc.pid] + marked(run):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=DEADLINE)
        end = time.monotonic() + DEADLINE
        while marked(run) and time.monotonic() < end:
            time.sleep(0.05)


if __name__ == "__main__":
    main()
