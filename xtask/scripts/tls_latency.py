#!/usr/bin/env python3
"""New TLS connections: the time from connect() to the whole answer of one request, for full
handshakes and for resumed ones (the session of the previous connection offered again),
against gracedemo --tls-self-signed (release) pinned to core 0; this client runs on core 1.
Sequential, so it measures latency, not throughput.

    cargo build --release -p gracedemo
    python3 xtask/scripts/tls_latency.py [--count 500]

Loopback only; bounded; the server is killed by pid at the end.
"""
import argparse, os, signal, socket, ssl, statistics, subprocess, sys, time

from loopback import ask_once, free_port

def one(port, ctx, session=None):
    t0 = time.perf_counter()
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    data = ask_once(s, host=b"localhost")
    elapsed = time.perf_counter() - t0
    reused = s.session_reused
    new_session = s.session
    s.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:40]
    return elapsed * 1000, reused, new_session

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/gracedemo")
    ap.add_argument("--count", type=int, default=500)
    a = ap.parse_args()
    os.sched_setaffinity(0, {1})
    port = free_port()
    server = subprocess.Popen(["taskset", "-c", "0", a.binary, "--tls-self-signed", "-a0", f"127.0.0.1:{port}",
                               "-a1", f"127.0.0.1:{free_port()}", "-a2", f"127.0.0.1:{free_port()}"],
                              stderr=subprocess.DEVNULL)
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        deadline = time.time() + 20
        while True:
            try:
                one(port, ctx)
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("the server did not start")
                time.sleep(0.05)
        full = [one(port, ctx)[0] for _ in range(a.count)]
        resumed, reused_count, session = [], 0, None
        for _ in range(a.count):
            ms, reused, session = one(port, ctx, session)
            resumed.append(ms)
            reused_count += reused
        q = lambda xs, p: sorted(xs)[int(len(xs) * p)]
        print(f"full handshakes: p50 {statistics.median(full):.3f} ms, p99 {q(full, 0.99):.3f} ms ({a.count} connections)")
        print(f"resumption offered: p50 {statistics.median(resumed):.3f} ms, p99 {q(resumed, 0.99):.3f} ms "
              f"({reused_count} of {a.count} resumed)")
        print(f"result: full_p50={statistics.median(full):.3f} full_p99={q(full, 0.99):.3f} "
              f"resumed_p50={statistics.median(resumed):.3f} resumed_p99={q(resumed, 0.99):.3f} "
              f"resumed={reused_count} count={a.count}")
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)

if __name__ == "__main__":
    main()
