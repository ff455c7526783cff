"""What the measurement scripts share: a free loopback port, the command that starts a server,
a process's CPU time, and one `Connection: close` request read to its end.

Imported by the scripts beside it (Python puts a script's own directory on its path).
"""
import socket

def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def server_command(kind, target, port):
    """The command that starts `kind` ("baseline" or "gracedemo") from `target` (a release
    directory) listening on 127.0.0.1:`port`; gracedemo's two other servers on free ports."""
    if kind == "baseline":
        return [f"{target}/baseline", f"127.0.0.1:{port}"]
    return [f"{target}/gracedemo", "-a0", f"127.0.0.1:{port}",
            "-a1", f"127.0.0.1:{free_port()}", "-a2", f"127.0.0.1:{free_port()}"]

def cpu_ticks(pid):
    """utime + stime of `pid`, in clock ticks (/proc/<pid>/stat, fields after the state)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])

def ask_once(sock, host=b"x", limit=65536):
    """Sends gracedemo's quick request on `sock` (`Connection: close`) and returns every byte of
    the answer, read until the server closes (or `limit` bytes)."""
    sock.sendall(b"GET /sleep/?duration=0s HTTP/1.1\r\nHost: " + host +
                 b"\r\nConnection: close\r\n\r\n")
    data = b""
    while len(data) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data

def answers(port):
    """Whether a server on 127.0.0.1:`port` answers gracedemo's quick request now (an answer,
    not only a connection: an activated socket takes connections before its server runs)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return bool(ask_once(sock))
    except OSError:
        return False
