//! gracenet hands its sockets to the next process: the same kernel sockets, with what was
//! queued on them, and nothing else.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use grace_tests::{DEADLINE, PidGuard, ProcessGuard, TempDir, field};

fn netprobe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_netprobe"))
}

fn read_line(stream: impl std::io::Read) -> String {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).expect("read a line");
    line.trim_end().to_owned()
}

#[test]
fn next_process_gets_the_same_sockets_their_queued_connections_and_nothing_else() {
    let dir = TempDir::new("handoff");
    let mut cmd = netprobe();
    cmd.arg("handoff").arg(dir.path()).stdin(Stdio::piped());
    let mut gen1 = ProcessGuard::spawn(cmd);
    let g1 = gen1.expect_line("gen1 ");
    assert_eq!(field(&g1, "origin"), "Fresh");
    let tcp_port: u16 = field(&g1, "tcp").parse().unwrap();
    let udp_port: u16 = field(&g1, "udp").parse().unwrap();

    // Queue a TCP and a Unix connection and a datagram; generation 1 never accepts them.
    let tcp_client = std::net::TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    let unix_path = dir.path().join("s.sock");
    let unix_client = UnixStream::connect(&unix_path).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"dgram-before", ("127.0.0.1", udp_port)).unwrap();
    tcp_client.set_read_timeout(Some(DEADLINE)).unwrap();
    unix_client.set_read_timeout(Some(DEADLINE)).unwrap();

    writeln!(gen1.stdin(), "spawn").unwrap();
    let spawned = gen1.expect_line("spawned ");
    let gen2_pid: u32 = field(&spawned, "pid").parse().unwrap();
    let gen2 = PidGuard(gen2_pid);

    // Exactly fds 0-2 and the three sockets, in registry order, with the protocol's variables.
    let fds = gen1.expect_line("gen2-fds ");
    assert_eq!(field(&fds, "pid"), gen2_pid.to_string());
    assert_eq!(field(&fds, "fds"), "0,1,2,3,4,5");
    let env = gen1.expect_line("gen2-env ");
    assert_eq!(
        field(&env, "listen_pid"),
        gen2_pid.to_string(),
        "LISTEN_PID is the child's own pid"
    );
    assert_eq!(field(&env, "listen_fds"), "3");
    assert_eq!(field(&env, "names"), "unknown:unknown:unknown");

    // The same kernel sockets: same ports and the same socket inodes.
    let g2 = gen1.expect_line("gen2 ");
    assert_eq!(field(&g2, "origin"), "Activated");
    for key in ["tcp", "tcp_ino", "unix_ino", "udp", "udp_ino"] {
        assert_eq!(
            field(&g2, key),
            field(&g1, key),
            "{key} differs between generations"
        );
    }
    // Removed after reading (on Linux; the portable path cannot count threads, so it never
    // changes the environment).
    let removed = if cfg!(gracenet_portable) { "true" } else { "false" };
    assert_eq!(field(&g2, "env_left"), removed, "LISTEN_* removed after reading");

    // What was queued before the child existed is answered by the child.
    let hello = format!("hello from {gen2_pid}");
    assert_eq!(read_line(&tcp_client), hello);
    assert_eq!(read_line(&unix_client), hello);
    let got = gen1.expect_line("gen2-udp ");
    assert_eq!(field(&got, "got"), "dgram-before");

    // The parent exits; the Unix socket path keeps working (it was never unlinked).
    writeln!(gen1.stdin(), "exit").unwrap();
    let status = gen1.wait_timeout(DEADLINE).expect("generation 1 exits");
    assert!(status.success(), "{status}");
    let again = UnixStream::connect(&unix_path).unwrap();
    again.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(read_line(&again), hello);
    assert!(gen2.is_alive());
}
