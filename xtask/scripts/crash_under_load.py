#!/usr/bin/env python3
"""A crash under load: `kill -9` of the serving process while clients keep opening new
connections, three times, with and without gracedemo's supervisor.

Starts the release gracedemo (pinned to core 0) with `--supervise`, runs client threads (on
core 1) that each send `GET /sleep/?duration=0s` on a new connection in a loop, kills the
serving process (the pid in the answers) three times, one second apart, and counts answers,
refused connections and other failures. Then the same without the supervisor — what Go grace,
which has none, does too: the sockets die with the process, and every connection after that is
refused until something starts the server again.

    cargo build --release -p gracedemo
    python3 xtask/scripts/crash_under_load.py [--binary target/release/gracedemo] [--clients 4]

`cargo xtask bench` runs it (and fails if, with the supervisor, a connection was refused);
its last line is `result: supervised_killed=N supervised_answered=N ... unsupervised_...`.

Loopback only; every loop is bounded in count and time; every process that answered is killed by pid.
"""
import argparse, os, re, signal, socket, subprocess, sys, threading, time

from loopback import ask_once, free_port

def get(port):
    """'ok', pid | 'refused' | 'failed'."""
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
    except ConnectionRefusedError:
        return "refused", None
    except OSError:
        return "failed", None
    try:
        data = ask_once(c)
        m = re.search(rb"from pid (\d+)", data)
        if data.startswith(b"HTTP/1.1 200") and m:
            return "ok", int(m.group(1))
        return "failed", None
    except OSError:
        return "failed", None
    finally:
        c.close()

def run(binary, supervise, clients, kills):
    port = free_port()
    args = ["taskset", "-c", "0", binary, "-a0", f"127.0.0.1:{port}",
            "-a1", f"127.0.0.1:{free_port()}", "-a2", f"127.0.0.1:{free_port()}"]
    if supervise:
        args.append("--supervise")
    server = subprocess.Popen(args, stderr=subprocess.DEVNULL, start_new_session=True)
    stop = threading.Event()
    counts = {"ok": 0, "refused": 0, "failed": 0}
    lock = threading.Lock()
    latest = {"pid": None}
    seen = set()
    def client():
        os.sched_setaffinity(0, {1}) if os.cpu_count() > 1 else None
        for _ in range(1_000_000):
            if stop.is_set():
                return
            kind, pid = get(port)
            with lock:
                counts[kind] += 1
                if pid:
                    latest["pid"] = pid
                    seen.add(pid)
    try:
        deadline = time.time() + 20
        while get(port)[0] != "ok":
            if time.time() > deadline:
                sys.exit("the server did not start")
            time.sleep(0.01)
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(1)
        killed = []
        for _ in range(kills):
            with lock:
                victim = latest["pid"]
            if victim is None or victim in killed:
                break
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            time.sleep(1)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        alive = server.poll() is None
        return counts, killed, alive, server.pid
    finally:
        stop.set()
        # Each generation leads its own process group: kill the supervisor and every pid
        # that answered.
        for pid in seen | {server.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.wait(timeout=10)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/gracedemo")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--kills", type=int, default=3)
    a = ap.parse_args()
    result = []
    for supervise in (True, False):
        counts, killed, alive, pid = run(a.binary, supervise, a.clients, a.kills)
        name = "with --supervise" if supervise else "without a supervisor (as Go grace)"
        print(f"{name}: kill -9 of {len(killed)} serving process(es) {killed}: "
              f"{counts['ok']} answered, {counts['refused']} refused, {counts['failed']} failed in flight; "
              f"first process (pid {pid}) {'still running' if alive else 'gone'}", flush=True)
        run_name = "supervised" if supervise else "unsupervised"
        result += [f"{run_name}_killed={len(killed)}", f"{run_name}_answered={counts['ok']}",
                   f"{run_name}_refused={counts['refused']}", f"{run_name}_failed={counts['failed']}"]
    # One line for `cargo xtask bench` to read.
    print("result: " + " ".join(result))

if __name__ == "__main__":
    main()
