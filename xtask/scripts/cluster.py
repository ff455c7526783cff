#!/usr/bin/env python3
"""gracedemo --workers 2 measured: against one process, the balance, restarts and kills.

The server (the primary and its workers, or the one process) is pinned to core 0 and wrk to
core 1, so the server's cost is not hidden in the client's; CPU per request is utime+stime of
every server process from /proc over the load. Figures:

1. throughput: 2 workers against one process with 2 runtime threads (TOKIO_WORKER_THREADS=2),
   HTTP/1.1 keep-alive (64 connections) and connection-per-request (8, and 64, connections,
   `Connection: close`), alternating which goes first; ratios cluster / one process of
   requests/s and CPU per request (also split into user and system time), and the context
   switches per request of each.
2. balance: each worker's share of the connections accepted in those loads (the control
   socket's status, `accepted N` per worker).
3. rolling restart: connection-per-request load with a rolling restart of both workers every
   2 s (asked on the control socket from this script, so no client process competes for a
   core), against the same load without, in pairs whose order alternates (--rounds pairs);
   the median p99 ratio, its range, and failed requests.
4. kill -9 of a worker every second for 10 s under connection-per-request load: connections
   refused (wrk's connect errors) and other failures.
5. memory: the primary's RSS and each worker's idle RSS.

    cargo build --release -p gracedemo
    python3 xtask/scripts/cluster.py [--rounds 3] [--seconds 5] [--standby] [--only throughput|restarts]
    python3 xtask/scripts/cluster.py --only throughput --workers 4   # 4 workers on the one core
    python3 xtask/scripts/cluster.py --only throughput --hogs 3      # 3 CPU-bound processes on core 0 too
    python3 xtask/scripts/cluster.py --shared-queue   # figure 1 on one socket the workers share

--shared-queue passes the port from systemd-socket-activate (as systemd's sockets, without
SO_REUSEPORT: every worker accepts from one queue) to both servers. Needs wrk and taskset
(and systemd-socket-activate for --shared-queue). Loopback only; every server process is killed by pid at the end;
every load is bounded in time. Prints one `result:` line of key=value pairs last.
"""
import argparse, os, re, signal, socket, statistics, subprocess, sys, tempfile, time

from loopback import answers, cpu_ticks, free_port

PATH = "/sleep/?duration=0s"
TARGET = os.path.join(os.path.dirname(__file__), "../../target/release")


EXTRA = []
# --shared-queue: the port is passed by systemd-socket-activate (no SO_REUSEPORT, as systemd's
# sockets by default), so the workers share one accept queue.
SHARED_QUEUE = []


def start(workers, threads, control):
    port = free_port()
    args = [f"{TARGET}/gracedemo", "-a0", f"127.0.0.1:{port}",
            "-a1", f"127.0.0.1:{free_port()}", "-a2", f"127.0.0.1:{free_port()}"]
    if workers:
        args += ["--workers", str(workers), "--control-socket", control] + EXTRA
    env = dict(os.environ, TOKIO_WORKER_THREADS=str(threads))
    activate = []
    if SHARED_QUEUE:
        # It passes on only the variables it is told to (and execs taskset, same pid).
        activate = ["systemd-socket-activate", "-l", f"127.0.0.1:{port}",
                    "-E", f"TOKIO_WORKER_THREADS={threads}"]
    p = subprocess.Popen(activate + ["taskset", "-c", "0"] + args, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 20
    poked = False
    while time.time() < deadline:
        if SHARED_QUEUE and not poked:
            # systemd-socket-activate starts the server at the first connection.
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                poked = True
            except OSError:
                pass
        if (not workers or len(worker_pids(control)) == workers) and answers(port):
            return p, port
        time.sleep(0.05)
    stop(p)
    sys.exit("the server did not start")


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def stop(p):
    for pid in descendants(p.pid)[::-1]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    p.wait()


def control_request(control, command, timeout=60):
    """One command on the control socket, from this process; the whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(control)
        s.sendall(command.encode() + b"\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return answer.decode(errors="replace")


def status_lines(control):
    try:
        return [l for l in control_request(control, "status", timeout=10).splitlines()
                if l.startswith("worker ")]
    except OSError:
        return []


def worker_pids(control):
    return [int(m.group(1)) for l in status_lines(control)
            if ", serving," in l and (m := re.search(r"pid (\d+)", l))]


def accepted(control):
    return {int(re.search(r"pid (\d+)", l).group(1)): int(re.search(r"accepted (\d+)", l).group(1))
            for l in status_lines(control) if "accepted" in l and "pid" in l}


def wrk(port, seconds, conns, close=False, latency=False):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s"]
    if close:
        cmd += ["-H", "Connection: close"]
    if latency:
        cmd += ["--latency"]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}{PATH}"], capture_output=True,
                         text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0}
    if errors:
        errs.update(dict(zip(["connect", "read", "write", "timeout"], map(int, errors.groups()))))
    if non2xx:
        errs["non2xx"] = int(non2xx.group(1))
    p99 = None
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    if m:
        p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    return rps, total, errs, p99


def server_counters(p):
    """utime and stime (ticks), voluntary and involuntary context switches, summed over every
    thread of every server process."""
    user = system = vol = invol = 0
    for pid in descendants(p.pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user, system = user + int(fields[11]), system + int(fields[12])
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/status") as f:
                    status = f.read()
                vol += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
                invol += int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
        except OSError:
            pass
    return user, system, vol, invol


WORKERS = [2]


def throughput(kind, seconds, conns, close, control):
    workers, threads = (WORKERS[0], 1) if kind == "cluster" else (0, 2)
    p, port = start(workers, threads, control)
    try:
        wrk(port, 1, conns, close)  # warm-up
        time.sleep(1.2)  # a heartbeat: the warm-up's counts are in the status (both kinds alike)
        before_acc = accepted(control) if workers else {}
        before = server_counters(p)
        rps, total, errs, _ = wrk(port, seconds, conns, close)
        user, system, vol, invol = (b - a for a, b in zip(before, server_counters(p)))
        time.sleep(1.2)  # a heartbeat: the status's counts are current
        shares = {}
        if workers:
            after = accepted(control)
            got = {pid: after.get(pid, 0) - before_acc.get(pid, 0) for pid in after}
            n = max(sum(got.values()), 1)
            shares = sorted(round(100 * v / n, 1) for v in got.values())
        us = lambda ticks: ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(total, 1)
        return {"rps": rps, "cpu": us(user + system), "user": us(user), "sys": us(system),
                "switches": (vol + invol) / max(total, 1), "errors": errs, "shares": shares}
    finally:
        stop(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--standby", action="store_true", help="workers keep their successor started ahead")
    ap.add_argument("--only", choices=["throughput", "restarts"], help="measure only these figures")
    ap.add_argument("--hogs", type=int, default=0,
                    help="CPU-bound processes sharing core 0 with the server during the throughput figures")
    ap.add_argument("--workers", type=int, default=2,
                    help="workers of the cluster in the throughput figures (all on core 0)")
    ap.add_argument("--shared-queue", action="store_true",
                    help="throughput on one socket passed by systemd-socket-activate (shared by the workers)")
    a = ap.parse_args()
    WORKERS[0] = max(a.workers, 1)
    if a.standby:
        EXTRA.append("--standby")
    if a.shared_queue:
        SHARED_QUEUE.append(True)
        a.only = "throughput"
    tmp = tempfile.mkdtemp(prefix="grace-cluster-bench-")
    control = os.path.join(tmp, "control")
    result = {}

    hogs = [subprocess.Popen(["taskset", "-c", "0", "python3", "-c", "while True: pass"])
            for _ in range(max(a.hogs, 0))] if a.only != "restarts" else []
    try:
        throughput_figures(a, control, result)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    if a.only == "throughput":
        print("result: " + " ".join(f"{k}={v}" for k, v in result.items()))
        return
    restart_figures(a, control, result)


def throughput_figures(a, control, result):
    modes = [] if a.only == "restarts" else [
        ("keepalive", 64, False), ("per_request", 8, True), ("per_request_64", 64, True)]
    for mode, conns, close in modes:
        ratios = {k: [] for k in ("rps", "cpu", "user", "sys")}
        switches, shares_all = {"cluster": [], "single": []}, []
        for r in range(a.rounds):
            order = ["cluster", "single"] if r % 2 == 0 else ["single", "cluster"]
            got = {k: throughput(k, a.seconds, conns, close, control) for k in order}
            c, s = got["cluster"], got["single"]
            for k in ratios:
                ratios[k].append(c[k] / s[k])
            for k in switches:
                switches[k].append(got[k]["switches"])
            shares_all.append(c["shares"])
            print(f"{mode} round {r + 1}: " + "; ".join(
                f"{k} {got[k]['rps']:.0f} req/s {got[k]['cpu']:.1f} us/req (user "
                f"{got[k]['user']:.1f}, sys {got[k]['sys']:.1f}), {got[k]['switches']:.3f} "
                f"context switches/req, errors {got[k]['errors']}" for k in ("cluster", "single"))
                + f"; shares {c['shares']}", flush=True)
        for k, v in ratios.items():
            result[f"{mode}_{k}_ratio"] = round(statistics.median(v), 3)
        for k, v in switches.items():
            result[f"{mode}_{k}_switches_per_req"] = round(statistics.median(v), 3)
        result[f"{mode}_min_share"] = min(min(s) for s in shares_all if s)
        result[f"{mode}_max_share"] = max(max(s) for s in shares_all if s)


def restart_figures(a, control, result):
    # Rolling restarts under connection-per-request load, in pairs (the same load without
    # restarts, then with a rolling restart every 2 s, the order alternating), each restart
    # asked on the control socket from here: no client process started on either core.
    p, port = start(2, 1, control)
    try:
        wrk(port, 1, 8, True)
        ratios, reloads, errors = [], [], []
        for r in range(a.rounds):
            order = [False, True] if r % 2 == 0 else [True, False]
            p99 = {}
            for restarting in order:
                load = subprocess.Popen(["taskset", "-c", "1", "wrk", "-t1", "-c8", "-d8s", "--latency",
                                         "-H", "Connection: close", f"http://127.0.0.1:{port}{PATH}"],
                                        stdout=subprocess.PIPE, text=True)
                t0 = time.time()
                while restarting and time.time() - t0 < 6.5:
                    time.sleep(2)
                    reloads.append(control_request(control, "restart").startswith("ok"))
                out, _ = load.communicate(timeout=40)
                m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
                p99[restarting] = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
                if restarting:
                    errs = re.search(r"Socket errors: (.*)", out)
                    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
                    if errs:
                        errors.append(errs.group(1).replace(" ", ""))
                    if non2xx:
                        errors.append(f"non2xx{non2xx.group(1)}")
            ratios.append(p99[True] / p99[False])
            print(f"rolling restart round {r + 1}: p99 {p99[True]:.2f} ms with restarts, "
                  f"{p99[False]:.2f} ms without", flush=True)
        result["rolling_restarts"] = len(reloads)
        result["rolling_restarts_failed"] = sum(1 for ok in reloads if not ok)
        result["rolling_p99_ratio"] = round(statistics.median(ratios), 3)
        result["rolling_p99_ratio_range"] = f"{min(ratios):.2f}-{max(ratios):.2f}"
        result["rolling_errors"] = ",".join(errors) or "none"
        print(f"rolling restart: p99 ratio median {result['rolling_p99_ratio']} "
              f"({result['rolling_p99_ratio_range']}); {len(reloads)} rolling restarts, "
              f"{result['rolling_restarts_failed']} failed; errors {result['rolling_errors']}", flush=True)

        # Memory, idle.
        time.sleep(1)
        rss = lambda pid: int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))
        result["primary_rss_kib"] = rss(p.pid)
        result["worker_rss_kib"] = max(rss(w) for w in worker_pids(control))
        print(f"memory: primary {result['primary_rss_kib']} KiB, workers "
              f"{[rss(w) for w in worker_pids(control)]} KiB", flush=True)

        # kill -9 of a worker every second under load.
        load = subprocess.Popen(["taskset", "-c", "1", "wrk", "-t1", "-c8", "-d11s",
                                 "-H", "Connection: close", f"http://127.0.0.1:{port}{PATH}"],
                                stdout=subprocess.PIPE, text=True)
        kills = 0
        t0 = time.time()
        for i in range(10):
            time.sleep(max(0.0, t0 + 1 + i - time.time()))
            pids = worker_pids(control)
            if pids:
                os.kill(pids[i % len(pids)], signal.SIGKILL)
                kills += 1
        out, _ = load.communicate(timeout=40)
        total = int(re.search(r"(\d+) requests in", out).group(1))
        e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        connect, read, write, tmo = map(int, e.groups()) if e else (0, 0, 0, 0)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        result["kills"] = kills
        result["kill_refused"] = connect
        result["kill_failed"] = read + write + tmo + (int(non2xx.group(1)) if non2xx else 0)
        result["kill_requests"] = total
        print(f"kill -9 of a worker every second: {kills} kills, {total} requests, "
              f"{connect} refused, {result['kill_failed']} failed", flush=True)
    finally:
        stop(p)
    print("result: " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
