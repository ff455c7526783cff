"""What the measurement scripts share: a free loopback port, and a process's CPU time.

Imported by the scripts beside it (Python puts a script's own directory on its path).
"""
import socket

def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def cpu_ticks(pid):
    """utime + stime of `pid`, in clock ticks (/proc/<pid>/stat, fields after the state)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
