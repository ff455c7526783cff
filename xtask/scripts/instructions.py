#!/usr/bin/env python3
"""Instructions per request, gracedemo against the plain-hyper baseline: the one measure of
the per-request cost that repeats to a few instructions from run to run on a shared host.

Each server runs under valgrind's callgrind (one tokio worker, pinned to core 0) while
`wrk -t1 -c64` loads it from core 1 with small keep-alive requests; the counters are zeroed
after a warm-up and dumped after the load, and the instructions are divided by wrk's request
count. malloc's share moves by about ±100 instructions with the heap's state and memcpy's
is the copies of futures and requests, so both are reported apart from the rest ("other").

    cargo build --release -p xtask --bin baseline
    cargo build --release -p gracedemo
    python3 xtask/scripts/instructions.py [--seconds 10] [--cache]

--cache adds callgrind's cache model (L1 misses per request; about 3x slower). Needs valgrind
(Debian: `apt-get install valgrind`), wrk and taskset. Loopback only; each server is killed by
pid; every load is bounded in time. A server under callgrind runs ~50x slower, so the figures
are instructions, never times.

Not run by `cargo xtask bench`, which does not install valgrind (the bench says so at the end
of a full run and in `cargo xtask --help`): run it by hand; BENCHMARKS.md keeps its last figures
under "Measured apart from the bench".
"""
import argparse, glob, os, re, shutil, signal, subprocess, sys, tempfile, time

from loopback import answers, free_port, server_command

PATH = "/sleep/?duration=0s"

def wait_answering(port, proc, deadline_s=60):
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit("the server exited before answering")
        if answers(port):
            return
        time.sleep(0.1)
    sys.exit(f"nothing answered on port {port} within {deadline_s} s")

def wrk(port, seconds):
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds}s",
                          f"http://127.0.0.1:{port}{PATH}"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    return int(re.search(r"(\d+) requests in", out).group(1))

def counts_and_name(line):
    """A callgrind_annotate line: its event counts (each `N (x%)`, or `.` for none) and what
    follows them."""
    tokens, counts, i = line.split(), [], 0
    while i < len(tokens):
        t = tokens[i]
        if re.fullmatch(r"[\d,]+", t):
            counts.append(int(t.replace(",", "")))
        elif t == ".":
            counts.append(0)
        elif not re.fullmatch(r"\(\s*[\d.]+%\)|\(|[\d.]+%\)", t):
            break
        i += 1
    return counts, " ".join(tokens[i:])

def totals(dump):
    """From a callgrind dump: the event names, the program's totals, and each function's
    own counts."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", dump],
                         capture_output=True, text=True, timeout=300).stdout
    events = re.search(r"Events shown:\s+(.*)", out).group(1).split()
    program, rows = None, {}
    for line in out.splitlines():
        counts, name = counts_and_name(line)
        if not counts or not name:
            continue
        if name == "PROGRAM TOTALS":
            program = counts
        elif ":" in name and program is not None:
            rows[name] = counts
    return events, program, rows

def measure(kind, target, seconds, cache, workdir):
    port = free_port()
    args = server_command(kind, target, port)
    dump = os.path.join(workdir, f"{kind}.out")
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}"]
    if cache:
        vg.append("--cache-sim=yes")
    env = dict(os.environ, TOKIO_WORKER_THREADS="1")
    p = subprocess.Popen(["taskset", "-c", "0"] + vg + args, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env)
    try:
        wait_answering(port, p)
        wrk(port, 3)  # warm-up
        subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, timeout=60)
        requests = wrk(port, seconds)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True, timeout=60)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    dumps = sorted(glob.glob(dump + ".*"))
    if not dumps:
        sys.exit(f"callgrind wrote no dump for {kind}")
    events, program, rows = totals(dumps[-1])
    if program is None:
        sys.exit(f"no totals in callgrind's dump for {kind}")
    per = lambda pick: sum(c[0] for f, c in rows.items() if pick(f)) / requests
    malloc = per(lambda f: re.search(r"malloc|arena\.c|__rust_alloc|__rust_dealloc", f) is not None)
    memcpy = per(lambda f: "memcpy" in f or "memmove" in f)
    total = program[0] / requests
    misses = {name: program[events.index(name)] / requests
              for name in ("I1mr", "D1mr", "D1mw") if name in events and events.index(name) < len(program)}
    return requests, total, malloc, memcpy, misses

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="target/release")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--cache", action="store_true")
    a = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing (Debian: apt-get install valgrind wrk util-linux)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="instructions-") as workdir:
        for kind in ("baseline", "gracedemo"):
            requests, total, malloc, memcpy, misses = measure(kind, a.target, a.seconds, a.cache, workdir)
            results[kind] = (total, malloc, memcpy, total - malloc - memcpy)
            extra = "".join(f", {k} {v:.1f}" for k, v in misses.items())
            print(f"{kind}: {requests} requests; per request {total:.0f} instructions: malloc "
                  f"{malloc:.0f}, memcpy {memcpy:.0f}, other {total - malloc - memcpy:.0f}{extra}",
                  flush=True)
    b, g = results["baseline"], results["gracedemo"]
    print(f"gracedemo / baseline: all {g[0] / b[0]:.3f}x, without malloc {(g[0] - g[1]) / (b[0] - b[1]):.3f}x, "
          f"other {g[3] / b[3]:.3f}x")
    print(f"result: all={g[0] / b[0]:.3f} no_malloc={(g[0] - g[1]) / (b[0] - b[1]):.3f} other={g[3] / b[3]:.3f}")

if __name__ == "__main__":
    main()
