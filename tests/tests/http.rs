//! gracehttp driven from outside: three ports and both protocols, TLS with ALPN, requests in
//! flight across restarts, busy keep-alive and HTTP/2 clients that lose nothing, axum,
//! WebSockets, bad certificates, renewed certificates, and stopping.

use std::process::Command;
use std::time::Duration;

use grace_tests::http::{
    Hammer, connect_h1, connect_h2c, get_h1, get_h2c, get_on_h1, get_on_h2, get_tls, write_cert,
};
use grace_tests::{
    DEADLINE, PidGuard, ProcessGuard, Site, TempDir, command, parse_serving, start_httpprobe, wait_until,
};
use http::{StatusCode, Version};
use nix::sys::signal::Signal;

const HTTPPROBE: &str = env!("CARGO_BIN_EXE_httpprobe");

/// SIGUSR2 to `pid`; waits for the new process's handoff line and the old one to stop
/// accepting. Returns the new pid.
fn restart(g: &mut ProcessGuard, pid: u32, ports: &[u16]) -> u32 {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGUSR2).expect("kill -USR2");
    let line = g.expect_log("Graceful handoff of ");
    let site = parse_serving(&line);
    assert!(line.contains(&format!("and old pid {pid}.")), "{line}");
    assert_eq!(site.ports, ports, "same addresses after the handoff");
    site.pid
}

/// The probe serving TLS on its third port with a new certificate (`cert.pem` and `key.pem`
/// in a temp dir of its own, named by `tag`): the dir, the certificate (DER), the process and
/// its site.
fn start_tls(tag: &str, env: &[(&str, &str)]) -> (TempDir, Vec<u8>, ProcessGuard, Site) {
    let dir = TempDir::new(tag);
    let root = write_cert(dir.path(), "cert.pem", "key.pem");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let (g, site) = start_httpprobe(command(HTTPPROBE, &["--tls-cert", &cert, "--tls-key", &key], env));
    (dir, root, g, site)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_ports_speak_http1_h2c_and_tls_with_alpn() {
    let (_dir, root, _g, site) = tokio::task::block_in_place(|| start_tls("three-ports", &[]));
    let pid = site.pid.to_string();

    let a = get_h1(site.ports[0], "/pid").await.unwrap();
    assert_eq!(
        (a.status, a.version, a.body.as_str()),
        (StatusCode::OK, Version::HTTP_11, pid.as_str())
    );
    let a = get_h2c(site.ports[1], "/pid").await.unwrap();
    assert_eq!(
        (a.status, a.version, a.body.as_str()),
        (StatusCode::OK, Version::HTTP_2, pid.as_str())
    );
    let (a, _) = get_tls(site.ports[2], "/pid", &root, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(
        (a.status, a.version, a.body.as_str()),
        (StatusCode::OK, Version::HTTP_2, pid.as_str())
    );
    let (a, _) = get_tls(site.ports[2], "/pid", &root, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(
        (a.status, a.version, a.body.as_str()),
        (StatusCode::OK, Version::HTTP_11, pid.as_str())
    );
    // No ALPN at all: HTTP/1.1 (HTTP/2 over TLS is only by ALPN, RFC 9113 §3.3).
    let (a, _) = get_tls(site.ports[2], "/pid", &root, &[]).await.unwrap();
    assert_eq!(
        (a.status, a.version, a.body.as_str()),
        (StatusCode::OK, Version::HTTP_11, pid.as_str())
    );
    let a = get_h1(site.ports[0], "/nope").await.unwrap();
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_extensions_carry_the_peer_only_when_asked_for() {
    // Asked for (the probe's default): the peer, over HTTP/1.1 and HTTP/2.
    let (_g, site) = tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &[], &[])));
    for answer in [
        get_h1(site.ports[0], "/peer").await.unwrap(),
        get_h2c(site.ports[1], "/peer").await.unwrap(),
    ] {
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.body.starts_with("127.0.0.1:"), "the peer: {}", answer.body);
    }
    // Not asked for (gracehttp's default): nothing is put in the request.
    let (_g, site) = tokio::task::block_in_place(|| {
        start_httpprobe(command(HTTPPROBE, &[], &[("PROBE_REQUEST_EXTENSIONS", "off")]))
    });
    for answer in [
        get_h1(site.ports[0], "/peer").await.unwrap(),
        get_h2c(site.ports[1], "/peer").await.unwrap(),
    ] {
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "none"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_not_ready_at_once_is_made_ready_before_every_call() {
    // Each instance of the probe's service is not ready at its first poll_ready and answers
    // 500 when called without a ready poll_ready: every request on a keep-alive HTTP/1.1
    // connection and on one HTTP/2 connection (all at once) must still get its 200.
    let (_g, site) =
        tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &["--reluctant"], &[])));
    let pid = site.pid.to_string();
    let mut h1 = connect_h1(site.ports[0]).await.unwrap();
    for i in 0..6 {
        let a = tokio::time::timeout(DEADLINE, get_on_h1(&mut h1, "/pid"))
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(
            (a.status, a.body.as_str()),
            (StatusCode::OK, pid.as_str()),
            "HTTP/1.1 request {i}"
        );
    }
    let h2 = connect_h2c(site.ports[1]).await.unwrap();
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let mut h2 = h2.clone();
        streams.spawn(async move { get_on_h2(&mut h2, "/pid").await });
    }
    for a in all_answered(streams, "answers in time").await {
        assert_eq!(
            (a.status, a.body.as_str()),
            (StatusCode::OK, pid.as_str()),
            "an HTTP/2 stream"
        );
    }
}

/// Every request of `set`, answered within [`DEADLINE`] (else a panic saying `what`).
async fn all_answered<E: std::fmt::Debug + Send + 'static>(
    set: tokio::task::JoinSet<Result<grace_tests::http::Answer, E>>,
    what: &str,
) -> Vec<grace_tests::http::Answer> {
    let answers = tokio::time::timeout(DEADLINE, set.join_all())
        .await
        .unwrap_or_else(|_| panic!("{what}"));
    answers.into_iter().map(|a| a.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_a_concurrency_limit_gets_its_turn() {
    // tower's ConcurrencyLimit of one, across connections: a request that finds the permit
    // taken waits in the semaphore's queue, and must be the one given the permit when it is
    // freed (were its place held by an instance nobody polls, it would wait forever).
    let (mut g, site) =
        tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &["--limit1"], &[])));
    let pid = site.pid.to_string();
    let port = site.ports[0];
    let holder = tokio::spawn(async move { get_h1(port, "/sleep?ms=500").await });
    // The first request holds the permit (it logs its start) before the others are sent.
    tokio::task::block_in_place(|| g.expect_log("sleep request started ms=500"));
    // All waiting at once: two HTTP/1.1 connections, and two streams of one HTTP/2 connection.
    let h2 = connect_h2c(site.ports[1]).await.unwrap();
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..2 {
        waiters.spawn(async move { get_h1(port, "/pid").await });
        let mut h2 = h2.clone();
        waiters.spawn(async move { get_on_h2(&mut h2, "/pid").await });
    }
    for a in all_answered(waiters, "every waiting request is answered in its turn").await {
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, pid.as_str()));
    }
    let held = holder.await.unwrap().unwrap();
    assert_eq!((held.status, held.body.as_str()), (StatusCode::OK, pid.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_request_finishes_in_the_old_process_while_the_new_one_answers() {
    let (mut g, site) = tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &[], &[])));
    let port = site.ports[0];
    let long = tokio::spawn(get_h1(port, "/sleep?ms=2000"));
    // The request is in flight once the server says it has started it.
    tokio::task::block_in_place(|| g.expect_log("sleep request started ms=2000"));
    let new = tokio::task::block_in_place(|| restart(&mut g, site.pid, &site.ports));
    let _new_guard = PidGuard(new);
    tokio::task::block_in_place(|| g.expect_log("stopped accepting generation=1 "));
    let quick = get_h1(port, "/pid").await.unwrap();
    assert_eq!(
        quick.body,
        new.to_string(),
        "a new request is answered by the new pid"
    );
    let long = long.await.unwrap().unwrap();
    assert_eq!((long.status, long.body), (StatusCode::OK, site.pid.to_string()));
    let status = tokio::task::block_in_place(|| g.wait_timeout(DEADLINE)).expect("old process exits");
    assert!(status.success(), "{status}");
    tokio::task::block_in_place(|| g.expect_log(&format!("Exiting pid {}.", site.pid)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_keepalive_and_http2_clients_lose_nothing_across_three_restarts() {
    let (mut g, site) = tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &[], &[])));
    let mut hammers = Vec::new();
    for _ in 0..4 {
        hammers.push(Hammer::start(site.ports[0], "/pid", false, 200_000));
        hammers.push(Hammer::start(site.ports[1], "/pid", true, 200_000));
    }
    let mut pids = vec![site.pid];
    let mut guards = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await; // let load build up
        let current = *pids.last().unwrap();
        let new = tokio::task::block_in_place(|| restart(&mut g, current, &site.ports));
        guards.push(PidGuard(new));
        pids.push(new);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut failures = Vec::new();
    let mut answered_by = std::collections::BTreeSet::new();
    let mut total = 0;
    for h in hammers {
        let stats = h.stop().await;
        failures.extend(stats.failures);
        for (body, n) in stats.by_body {
            answered_by.insert(body);
            total += n;
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed of {total}: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let last = pids.last().unwrap().to_string();
    assert!(
        answered_by.contains(&last),
        "the last generation answered: {answered_by:?}"
    );
    assert!(
        answered_by.len() >= 3,
        "several generations answered: {answered_by:?}"
    );
    eprintln!("{total} requests, 0 failed, answered by {answered_by:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_router_is_served_restarted_and_stopped() {
    let (mut g, site) = tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &["--axum"], &[])));
    let a = get_h1(site.ports[0], "/pid").await.unwrap();
    assert_eq!(a.body, format!("{} axum", site.pid));
    let new = tokio::task::block_in_place(|| restart(&mut g, site.pid, &site.ports));
    let new_guard = PidGuard(new);
    assert!(wait_until(DEADLINE, || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(get_h2c(site.ports[1], "/pid"))
        })
        .map(|a| a.body == format!("{new} axum"))
        .unwrap_or(false)
    }));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(new as i32), Signal::SIGTERM).unwrap();
    tokio::task::block_in_place(|| g.expect_log(&format!("Exiting pid {new}.")));
    assert!(wait_until(DEADLINE, || !new_guard.is_alive()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_stays_with_the_old_process_until_it_closes_on_the_drain_signal() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (mut g, site) = tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &[], &[])));
    let port = site.ports[0];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/ws"), tcp)
        .await
        .unwrap();
    let next_text = async |ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>| loop {
        match tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a message in time")
        {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("the WebSocket ended: {other:?}"),
        }
    };
    ws.send(Message::text("a")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, format!("{} a", site.pid));

    let new = tokio::task::block_in_place(|| restart(&mut g, site.pid, &site.ports));
    let _new_guard = PidGuard(new);
    assert_eq!(next_text(&mut ws).await, format!("draining {}", site.pid));
    // Still exchanging with the old process, which stopped accepting but waits for us.
    ws.send(Message::text("b")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, format!("{} b", site.pid));
    assert_eq!(get_h1(port, "/pid").await.unwrap().body, new.to_string());
    assert!(tokio::task::block_in_place(|| g.wait_timeout(Duration::from_millis(200))).is_none());
    ws.send(Message::text("close")).await.unwrap();
    let status = tokio::task::block_in_place(|| g.wait_timeout(DEADLINE)).expect("old process exits");
    assert!(status.success(), "{status}");
}

#[test]
fn bad_certificate_files_are_named_and_nothing_is_served() {
    let dir = TempDir::new("bad-tls");
    write_cert(dir.path(), "cert.pem", "key.pem");
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate\n").unwrap();
    // An encrypted PKCS#8 key (its label is what matters), and a certificate cut short.
    std::fs::write(
        dir.path().join("encrypted.pem"),
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    let whole = std::fs::read_to_string(dir.path().join("cert.pem")).unwrap();
    std::fs::write(dir.path().join("cut.pem"), &whole[..whole.len() / 2]).unwrap();
    for (cert, key, expect) in [
        (
            "cert.pem",
            "encrypted.pem",
            "encrypted.pem: the key is encrypted with a passphrase",
        ),
        (
            "cut.pem",
            "key.pem",
            "cut.pem: malformed PEM: a block has no \"-----END CERTIFICATE-----\" line",
        ),
        ("missing.pem", "key.pem", "missing.pem: cannot read it"),
        (
            "garbage.pem",
            "key.pem",
            "garbage.pem: no \"BEGIN CERTIFICATE\" block",
        ),
        ("cert.pem", "garbage.pem", "garbage.pem: no private key block"),
    ] {
        let mut cmd = Command::new(HTTPPROBE);
        cmd.arg("--tls-cert")
            .arg(dir.path().join(cert))
            .arg("--tls-key")
            .arg(dir.path().join(key));
        let mut g = ProcessGuard::spawn(cmd);
        let line = g.expect_log("httpprobe: TLS");
        assert!(line.contains(expect), "{line}");
        assert!(!line.contains("[4"), "no byte dumps: {line}");
        let status = g.wait_timeout(DEADLINE).expect("exits");
        assert_eq!(status.code(), Some(1));
        assert!(
            !g.output_after_exit().iter().any(|l| l.contains("Serving ")),
            "nothing served"
        );
    }
}

#[test]
fn an_expired_certificate_is_served_with_a_warning_at_start() {
    let dir = TempDir::new("expired-tls");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    let mut cmd = Command::new(HTTPPROBE);
    cmd.arg("--tls-cert")
        .arg(dir.path().join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.path().join("key.pem"));
    let mut g = ProcessGuard::spawn(cmd);
    let warning = g.expect_log("expired on 2021-01-01 00:00:00 UTC");
    assert!(
        warning.contains("cert.pem") && warning.contains("clients will refuse it"),
        "{warning}"
    );
    g.expect_log("Serving ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_renewed_on_disk_is_served_after_a_restart() {
    let (dir, first, mut g, site) = tokio::task::block_in_place(|| start_tls("renew", &[]));
    let tls_port = site.ports[2];
    let (_, seen) = get_tls(tls_port, "/pid", &first, &[b"h2"]).await.unwrap();
    assert_eq!(seen, first);
    // Renew: new files written beside, then renamed over the old ones.
    let second = write_cert(dir.path(), "cert.pem.new", "key.pem.new");
    std::fs::rename(dir.path().join("key.pem.new"), dir.path().join("key.pem")).unwrap();
    std::fs::rename(dir.path().join("cert.pem.new"), dir.path().join("cert.pem")).unwrap();
    let new = tokio::task::block_in_place(|| restart(&mut g, site.pid, &site.ports));
    let _new_guard = PidGuard(new);
    tokio::task::block_in_place(|| g.expect_log("stopped accepting generation=1 "));
    let (answer, seen) = get_tls(tls_port, "/pid", &second, &[b"h2"]).await.unwrap();
    assert_eq!(seen, second, "the renewed certificate is served");
    assert_eq!(answer.body, new.to_string());
}

/// One `GET /pid` with `Connection: close` on `tls`, read to the end (so any session ticket
/// sent after the handshake is read too); returns the body.
async fn pid_over(mut tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /pid HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, tls.read_to_string(&mut answer))
        .await
        .expect("the answer within the deadline")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer.rsplit("\r\n\r\n").next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_resumes_its_session_after_many_other_clients_and_across_restarts() {
    use grace_tests::http::{tls_client, tls_connect, tls_connect_as};
    use rustls::HandshakeKind::{Full, Resumed};
    // More new clients between a client's two connections than a server-side session cache
    // holds (rustls's default keeps 256 sessions, two per connection).
    const OTHERS: usize = 300;
    let (_dir, root, mut g, site) = tokio::task::block_in_place(|| start_tls("resume", &[]));
    let port = site.ports[2];
    let client = tls_client(&root, &[b"http/1.1"]).unwrap();

    let tls = tls_connect_as(port, client.clone()).await.unwrap();
    assert_eq!(tls.get_ref().1.handshake_kind(), Some(Full));
    pid_over(tls).await;
    for _ in 0..OTHERS {
        let other = tls_connect(port, &root, &[b"http/1.1"]).await.unwrap();
        assert_eq!(other.get_ref().1.handshake_kind(), Some(Full), "a new client");
        pid_over(other).await;
    }
    let tls = tls_connect_as(port, client.clone()).await.unwrap();
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(Resumed),
        "the session resumes after {OTHERS} other clients"
    );
    assert_eq!(pid_over(tls).await, site.pid.to_string());

    // The ticket keys are handed to the next process: the session the first process gave
    // resumes with the second, and the second's with the third.
    let (mut pid, mut guards) = (site.pid, Vec::new());
    for generation in 1..=2 {
        let new = tokio::task::block_in_place(|| restart(&mut g, pid, &site.ports));
        guards.push(PidGuard(new));
        tokio::task::block_in_place(|| g.expect_log(&format!("stopped accepting generation={generation} ")));
        let tls = tls_connect_as(port, client.clone()).await.unwrap();
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(Resumed),
            "resumed with generation {}",
            generation + 1
        );
        assert_eq!(pid_over(tls).await, new.to_string());
        pid = new;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_gets_aes_128_unless_it_prefers_chacha20() {
    use grace_tests::http::{tls_client_offering, tls_connect_as};
    use rustls::CipherSuite as C;
    use rustls::crypto::aws_lc_rs::cipher_suite::{
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 as TLS12_AES_128,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 as TLS12_AES_256,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 as TLS12_CHACHA, TLS13_AES_128_GCM_SHA256 as AES_128,
        TLS13_AES_256_GCM_SHA384 as AES_256, TLS13_CHACHA20_POLY1305_SHA256 as CHACHA,
    };
    let (tls13, tls12) = (&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]);
    let (_dir, root, _g, site) = tokio::task::block_in_place(|| start_tls("suites", &[]));
    let cases = [
        // OpenSSL's order: AES-256 first. The server's preference: AES-128 (SHA-256).
        (vec![AES_256, CHACHA, AES_128], tls13, C::TLS13_AES_128_GCM_SHA256),
        // A client without AES instructions puts ChaCha20 first: it gets it.
        (
            vec![CHACHA, AES_256, AES_128],
            tls13,
            C::TLS13_CHACHA20_POLY1305_SHA256,
        ),
        // Only AES-256 offered: AES-256.
        (vec![AES_256], tls13, C::TLS13_AES_256_GCM_SHA384),
        // TLS 1.2 alike.
        (
            vec![TLS12_AES_256, TLS12_CHACHA, TLS12_AES_128],
            tls12,
            C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            vec![TLS12_CHACHA, TLS12_AES_128],
            tls12,
            C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ];
    for (offered, versions, expected) in cases {
        let names: Vec<C> = offered.iter().map(|s| s.suite()).collect();
        let client = tls_client_offering(&root, &[b"http/1.1"], &offered, versions).unwrap();
        let tls = tls_connect_as(site.ports[2], client).await.unwrap();
        let chosen = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
        assert_eq!(chosen, Some(expected), "offered {names:?}");
        assert_eq!(
            pid_over(tls).await,
            site.pid.to_string(),
            "answered over {expected:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_long_request_finish_then_exits_zero() {
    let (mut g, site) = tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &[], &[])));
    let long = tokio::spawn(get_h1(site.ports[0], "/sleep?ms=1500"));
    // The request is in flight once the server says it has started it.
    tokio::task::block_in_place(|| g.expect_log("sleep request started ms=1500"));
    g.signal(Signal::SIGTERM);
    let long = long.await.unwrap().unwrap();
    assert_eq!((long.status, long.body), (StatusCode::OK, site.pid.to_string()));
    let status = tokio::task::block_in_place(|| g.wait_timeout(DEADLINE)).expect("exits");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_timeout_shorter_than_the_request_ends_it_at_the_timeout() {
    let (mut g, site) = tokio::task::block_in_place(|| {
        start_httpprobe(command(HTTPPROBE, &[], &[("PROBE_STOP_TIMEOUT_MS", "300")]))
    });
    let long = tokio::spawn(get_h1(site.ports[0], "/sleep?ms=30000"));
    // The request is in flight once the server says it has started it.
    tokio::task::block_in_place(|| g.expect_log("sleep request started ms=30000"));
    g.signal(Signal::SIGTERM);
    let status = tokio::task::block_in_place(|| g.wait_timeout(DEADLINE)).expect("exits at the stop timeout");
    assert!(status.success(), "{status}");
    assert!(long.await.unwrap().is_err(), "the unfinished request was cut");
    tokio::task::block_in_place(|| g.expect_log("done: gave up on unfinished connections or tasks; exiting"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_closed_at_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_g, site) = tokio::task::block_in_place(|| {
        start_httpprobe(command(HTTPPROBE, &[], &[("PROBE_HEADER_TIMEOUT_MS", "300")]))
    });
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", site.ports[0]))
        .await
        .unwrap();
    slow.write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\n").await.unwrap(); // never the blank line
    let mut buf = Vec::new();
    let read = tokio::time::timeout(DEADLINE, slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server closed the slow connection");
    assert!(
        !String::from_utf8_lossy(&buf).contains(&site.pid.to_string()),
        "it was not served"
    );
    // Meanwhile a normal client is answered.
    assert_eq!(
        get_h1(site.ports[0], "/pid").await.unwrap().body,
        site.pid.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_further_connections_in_the_backlog() {
    let (mut g, site) = tokio::task::block_in_place(|| {
        start_httpprobe(command(HTTPPROBE, &[], &[("PROBE_MAX_CONNECTIONS", "1")]))
    });
    let port = site.ports[0];
    let timed = |path: &'static str| async move {
        let answer = get_h1(port, path).await;
        (answer, std::time::Instant::now())
    };
    let long = tokio::spawn(timed("/sleep?ms=1000"));
    // The long request holds the one connection slot once the server has started it.
    tokio::task::block_in_place(|| g.expect_log("sleep request started ms=1000"));
    let quick = tokio::spawn(timed("/pid"));
    let (long, long_done) = long.await.unwrap();
    let (quick, quick_done) = quick.await.unwrap();
    assert_eq!(long.unwrap().status, StatusCode::OK);
    assert_eq!(
        quick.unwrap().body,
        site.pid.to_string(),
        "served once a connection slot freed up"
    );
    assert!(
        quick_done >= long_done,
        "the second connection waited for the first to finish: {:?}",
        long_done.duration_since(quick_done)
    );
}

#[test]
fn a_socket_activated_server_says_so_in_grace_words() {
    let port = grace_tests::free_port();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg(format!("--listen=127.0.0.1:{port}")).arg(HTTPPROBE);
    let mut g = ProcessGuard::spawn(cmd);
    // The activator starts the server on the first connection.
    let client = grace_tests::wait_until(DEADLINE, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(client);
    let line = g.expect_log("Listening on init activated ");
    assert!(
        line.contains(&format!(
            "Listening on init activated 127.0.0.1:{port}, 127.0.0.1:"
        )),
        "{line}"
    );
}

/// An HTTP/2 frame as read: type, flags, stream id, payload.
type Frame = (u8, u8, u32, Vec<u8>);

/// What [`read_frames`] saw.
struct FramesRead {
    frames: Vec<Frame>,
    /// A frame `stop` asked for arrived.
    stopped: bool,
    /// The server closed the connection.
    closed: bool,
}

/// Reads HTTP/2 frames from `c` for `window`, answering PINGs as a live client does, until
/// `stop` holds for one or the server closes; with `ping_every`, also sends a PING of its own
/// each time that long passes with nothing read (so the connection never looks idle).
fn read_frames(
    c: &mut std::net::TcpStream,
    window: Duration,
    ping_every: Option<Duration>,
    stop: impl Fn(&Frame) -> bool,
) -> FramesRead {
    use std::io::{ErrorKind, Read, Write};
    const PING: u8 = 0x6;
    c.set_read_timeout(Some(ping_every.unwrap_or(Duration::from_millis(20))))
        .unwrap();
    let until = std::time::Instant::now() + window;
    let mut read = FramesRead {
        frames: Vec::new(),
        stopped: false,
        closed: false,
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while std::time::Instant::now() < until {
        match c.read(&mut chunk) {
            Ok(0) => {
                read.closed = true;
                return read;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if ping_every.is_some() {
                    let _ = c.write_all(&[0, 0, 8, PING, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
                }
            }
            Err(_) => {
                read.closed = true;
                return read;
            }
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let raw: Vec<u8> = buf.drain(..9 + len).collect();
            let stream = u32::from_be_bytes([raw[5] & 0x7f, raw[6], raw[7], raw[8]]);
            let frame = (raw[3], raw[4], stream, raw[9..].to_vec());
            if frame.0 == PING && frame.1 & 0x1 == 0 {
                let mut ack = vec![0, 0, 8, PING, 0x1, 0, 0, 0, 0];
                ack.extend_from_slice(&frame.3);
                let _ = c.write_all(&ack);
            }
            let done = stop(&frame);
            read.frames.push(frame);
            if done {
                read.stopped = true;
                return read;
            }
        }
    }
    read
}

/// Reads HTTP/2 frames from `c` until one of type `want` arrives (`None`: until the server
/// closes the connection), as a live client that PINGs every 100 ms; returns whether it came
/// within [`DEADLINE`].
fn read_until_frame(c: &mut std::net::TcpStream, want: Option<u8>) -> bool {
    let read = read_frames(c, DEADLINE, Some(Duration::from_millis(100)), |f| {
        Some(f.0) == want
    });
    match want {
        Some(_) => read.stopped,
        None => read.closed,
    }
}

/// The frames `c` receives for `window` (or until the server closes), answering PINGs.
fn frames_for(c: &mut std::net::TcpStream, window: Duration) -> Vec<Frame> {
    read_frames(c, window, None, |_| false).frames
}

#[test]
fn a_fresh_http2_connection_at_a_drain_has_its_first_request_answered_before_goaway() {
    use std::io::Write;
    const SETTINGS: u8 = 0x4;
    const HEADERS: u8 = 0x1;
    const GOAWAY: u8 = 0x7;
    // A grace far longer than the test's own steps, so "not yet" is not a race.
    let (mut g, site) = start_httpprobe(command(
        HTTPPROBE,
        &[],
        &[
            ("PROBE_STOP_TIMEOUT_MS", "600000"),
            ("PROBE_IDLE_GRACE_MS", "5000"),
        ],
    ));
    // A client that has connected and spoken HTTP/2 but not sent its request yet, as a pooled
    // client does between its handshake and its first request.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", site.ports[0])).unwrap();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    assert!(
        read_until_frame(&mut c, Some(SETTINGS)),
        "no SETTINGS from the server"
    );
    g.signal(Signal::SIGTERM);
    g.expect_log("stopping: draining connections and tasks");
    // No GOAWAY yet: one now would cost this client its request (a pooled client retries only
    // on a connection it has used before).
    let early = frames_for(&mut c, Duration::from_millis(300));
    assert!(
        !early.iter().any(|f| f.0 == GOAWAY),
        "GOAWAY before the first request: {early:?}"
    );
    // GET / on stream 1 (HPACK: :method GET, :scheme http, :path /, :authority localhost).
    let block = b"\x82\x86\x84\x41\x09localhost";
    let mut headers = vec![0, 0, block.len() as u8, HEADERS, 0x5, 0, 0, 0, 1];
    headers.extend_from_slice(block);
    c.write_all(&headers).unwrap();
    let after = frames_for(&mut c, Duration::from_secs(3));
    // Answered (the probe's 404 for `/` is an answer; a refused stream gets none).
    assert!(
        after.iter().any(|f| f.0 == HEADERS && f.2 == 1),
        "stream 1 not answered: {after:?}"
    );
    // Then told to go, with stream 1 counted as processed.
    let goaway = after.iter().find(|f| f.0 == GOAWAY).map(|f| {
        let p = &f.3;
        u32::from_be_bytes([p[0] & 0x7f, p[1], p[2], p[3]])
    });
    assert!(goaway.is_some_and(|last| last >= 1), "{after:?}");
    drop(c);
    let status = g.wait_timeout(DEADLINE).expect("the process exits");
    assert!(status.success(), "{status}");
}

#[test]
fn an_http2_connection_that_only_pings_gets_goaway_within_the_idle_grace_when_draining() {
    use std::io::{Read, Write};
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    // A stop timeout far longer than any test: the drain must end because the connections
    // went, not because the timeout passed.
    let (mut g, site) = start_httpprobe(command(HTTPPROBE, &[], &[("PROBE_STOP_TIMEOUT_MS", "600000")]));
    // Half a preface (its bytes wait unread while the protocol is told), on the listener the
    // HTTP/2 client uses next: accepted in order, so it is accepted once that one is answered.
    let mut half = std::net::TcpStream::connect(("127.0.0.1", site.ports[0])).unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    let mut h2 = std::net::TcpStream::connect(("127.0.0.1", site.ports[0])).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    // The server's SETTINGS: it has read the preface and holds the connection.
    assert!(
        read_until_frame(&mut h2, Some(SETTINGS)),
        "no SETTINGS from the server"
    );
    // A connection that has sent nothing at all is closed at the idle grace, and so is the
    // half preface.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", site.ports[1])).unwrap();
    g.signal(Signal::SIGTERM);
    assert!(
        read_until_frame(&mut h2, Some(GOAWAY)),
        "no GOAWAY for a connection with no request"
    );
    // A client with nothing in flight closes after GOAWAY (RFC 9113 §6.8), as curl does.
    // (One that never closes is held until the stop timeout: issue 15's idle timeout.)
    drop(h2);
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(
        silent.read(&mut [0u8; 1]).unwrap_or(0),
        0,
        "the silent connection is closed"
    );
    assert!(
        closed_by_server(&mut half),
        "the half preface's connection is closed (not reset)"
    );
    let done = g.expect_log(" done: ");
    assert!(done.contains("done: drained; exiting"), "{done}");
    let status = g
        .wait_timeout(DEADLINE)
        .expect("the process exits once they are gone");
    assert!(status.success(), "{status}");
}

/// Reads until the server closes the connection (or [`DEADLINE`]); whether it closed.
fn closed_by_server(c: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut sink = Vec::new();
    c.read_to_end(&mut sink).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_at_the_header_read_timeout_whatever_they_sent() {
    use std::io::Write;
    let (_dir, root, mut g, site) =
        tokio::task::block_in_place(|| start_tls("silent", &[("PROBE_HEADER_TIMEOUT_MS", "1000")]));
    let plain = site.ports[0];
    let mut cases = Vec::new();
    for (what, bytes) in [
        ("nothing", &b""[..]),
        ("half an HTTP/2 preface", &b"PRI * HTTP/2.0\r\n"[..]),
        (
            "an HTTP/2 preface and SETTINGS",
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0"[..],
        ),
    ] {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", plain)).unwrap();
        c.write_all(bytes).unwrap();
        cases.push((what, c));
    }
    // A finished TLS handshake, then nothing.
    let tls = grace_tests::http::tls_connect(site.ports[2], &root, &[b"h2"])
        .await
        .unwrap();
    let tls_closed = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut tls = tls;
        let mut sink = Vec::new();
        tokio::time::timeout(DEADLINE, tls.read_to_end(&mut sink))
            .await
            .is_ok()
    });
    for (what, mut c) in cases {
        assert!(
            tokio::task::block_in_place(|| closed_by_server(&mut c)),
            "a connection that sent {what} is closed"
        );
    }
    assert!(
        tls_closed.await.unwrap(),
        "a TLS connection that sent no request is closed"
    );
    // Normal clients are served throughout.
    assert_eq!(get_h1(plain, "/pid").await.unwrap().body, site.pid.to_string());
    assert!(!g.seen().iter().any(|l| l.contains("panicked")));
}

/// HTTP over a Unix socket: HTTP/1.1 and HTTP/2 prior knowledge told apart by their first
/// bytes (peeked on a Unix stream as on TCP), the peer given as its credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_speaks_http1_and_http2_and_knows_its_peer() {
    let dir = TempDir::new("unix-http");
    let path = dir.path().join("http.sock");
    let mut cmd = Command::new(HTTPPROBE);
    cmd.env("PROBE_UNIX", &path);
    let mut g = ProcessGuard::spawn(cmd);
    let line = tokio::task::block_in_place(|| g.expect_log("Serving "));
    assert!(line.contains(&path.display().to_string()), "{line}");
    let pid = g.pid().to_string();

    let mut h1 = grace_tests::http::connect_h1_unix(&path).await.unwrap();
    let a = grace_tests::http::get_on_h1(&mut h1, "/pid").await.unwrap();
    assert_eq!(
        (a.status, a.version, a.body.as_str()),
        (StatusCode::OK, Version::HTTP_11, pid.as_str())
    );
    let a = grace_tests::http::get_on_h1(&mut h1, "/peer").await.unwrap();
    assert_eq!(
        a.body,
        format!(
            "unix peer pid {} uid {}",
            std::process::id(),
            nix::unistd::getuid()
        ),
        "the peer's credentials"
    );

    let mut h2 = grace_tests::http::connect_h2_unix(&path).await.unwrap();
    let a = grace_tests::http::get_on_h2(&mut h2, "/pid").await.unwrap();
    assert_eq!(
        (a.status, a.version, a.body.as_str()),
        (StatusCode::OK, Version::HTTP_2, pid.as_str())
    );
}

/// A cleartext connection's protocol is told by its first bytes however they arrive: the
/// HTTP/2 preface in pieces is HTTP/2, a request whose method is `PRI` is HTTP/1.1, and a
/// peer that stops partway through the preface is closed.
#[test]
fn a_cleartext_connection_is_told_by_its_first_bytes_however_they_arrive() {
    use std::io::{Read, Write};
    let (_g, site) = start_httpprobe(command(HTTPPROBE, &[], &[]));
    let port = site.ports[0];
    // The preface in three writes (with Nagle off and a pause between them, three segments),
    // then SETTINGS and a GET: the response's HEADERS come back.
    let mut h2 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    h2.set_nodelay(true).unwrap();
    for piece in [&b"PRI * H"[..], &b"TTP/2.0\r\n\r\nS"[..], &b"M\r\n\r\n"[..]] {
        h2.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    h2.write_all(b"\0\0\0\x04\0\0\0\0\0").unwrap();
    h2.write_all(&[0, 0, 14, 0x1, 0x5, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x01, 0x09])
        .unwrap();
    h2.write_all(b"localhost").unwrap();
    assert!(
        read_until_frame(&mut h2, Some(0x1)),
        "a preface in pieces is HTTP/2: the response's HEADERS"
    );
    // `PRI` as an HTTP/1.1 method: answered in HTTP/1.1.
    let mut h1 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    h1.write_all(b"PRI /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    h1.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = Vec::new();
    h1.read_to_end(&mut answer).unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 "),
        "answered in HTTP/1.1: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // Part of the preface, then the end of the stream: closed (not reset), without waiting
    // for the header read timeout.
    let mut half = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(
        closed_by_server(&mut half),
        "a peer that stopped partway is closed"
    );
    // Served throughout.
    let a = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(get_h1(port, "/pid"))
        .unwrap();
    assert_eq!(a.body, site.pid.to_string());
}

#[test]
fn idle_connections_are_closed_at_the_idle_timeout_pings_or_not() {
    use std::io::{Read, Write};
    let (_g, site) = start_httpprobe(command(HTTPPROBE, &[], &[("PROBE_IDLE_TIMEOUT_MS", "1000")]));
    // HTTP/2: one request (HEADERS with the static-table :method GET, :scheme http, :path /
    // and a literal :authority localhost), then only PINGs, every 100 ms: GOAWAY and a close
    // all the same.
    let mut h2 = std::net::TcpStream::connect(("127.0.0.1", site.ports[0])).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    h2.write_all(&[0, 0, 14, 0x1, 0x5, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x01, 0x09])
        .unwrap();
    h2.write_all(b"localhost").unwrap();
    assert!(read_until_frame(&mut h2, Some(0x1)), "the response's HEADERS");
    assert!(
        read_until_frame(&mut h2, Some(0x7)),
        "GOAWAY for an idle HTTP/2 connection"
    );
    assert!(read_until_frame(&mut h2, None), "then closed");
    // HTTP/1.1 keep-alive: answered, then closed once idle.
    let mut h1 = std::net::TcpStream::connect(("127.0.0.1", site.ports[0])).unwrap();
    h1.write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    h1.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    assert!(
        closed_by_server(&mut h1),
        "an idle keep-alive connection is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applications_own_listener_is_adopted_and_passed_on() {
    // httpprobe --adopt binds its first address itself (std's TcpListener on port 0).
    let (mut g, site) =
        tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &["--adopt"], &[])));
    let own = site.ports[0];
    assert_eq!(get_h1(own, "/pid").await.unwrap().body, site.pid.to_string());
    let new = tokio::task::block_in_place(|| restart(&mut g, site.pid, &site.ports));
    let _g2 = PidGuard(new);
    // The same port: the next generation got the adopted socket (named "own"), not a new one.
    let answered = tokio::task::block_in_place(|| {
        wait_until(DEADLINE, || {
            tokio::runtime::Handle::current()
                .block_on(get_h1(own, "/pid"))
                .is_ok_and(|a| a.body == new.to_string())
        })
    });
    assert!(answered, "the adopted socket is served by the new process");
    let environ = std::fs::read(format!("/proc/{new}/environ")).unwrap();
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|kv| kv.starts_with(b"LISTEN_FDNAMES=own:")),
        "passed on under its name"
    );
}

/// Keep-alive HTTP/1.1 connections handed to the new process at a restart (gracehttp's
/// default when it starts the lifecycle): over TCP and over a Unix socket, the new process
/// answers the next request on the same connection and knows the same peer; an HTTP/2
/// connection still gets GOAWAY (its next stream is refused, and a new connection is served
/// by the new process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_keep_alive_connection_keeps_its_peer_and_http2_still_gets_goaway() {
    let dir = TempDir::new("handed-peer");
    let path = dir.path().join("http.sock");
    let path_text = path.display().to_string();
    let mut cmd = Command::new(HTTPPROBE);
    cmd.env("PROBE_UNIX", &path);
    let mut g = ProcessGuard::spawn(cmd);
    let line = tokio::task::block_in_place(|| g.expect_log("Serving "));
    assert!(line.contains(&path_text), "{line}");
    // The TCP ports (the Unix socket's address has none).
    let ports: Vec<u16> = line
        .split("127.0.0.1:")
        .skip(1)
        .filter_map(|p| p.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    let site = Site { pid: g.pid(), ports };
    let old = site.pid.to_string();
    let mut tcp = connect_h1(site.ports[0]).await.unwrap();
    let mut unix = grace_tests::http::connect_h1_unix(&path).await.unwrap();
    let mut h2 = connect_h2c(site.ports[1]).await.unwrap();
    let mut peers = Vec::new();
    for conn in [&mut tcp, &mut unix] {
        assert_eq!(get_on_h1(conn, "/pid").await.unwrap().body, old);
        peers.push(get_on_h1(conn, "/peer").await.unwrap().body);
    }
    assert_eq!(get_on_h2(&mut h2, "/pid").await.unwrap().body, old);
    assert!(peers[0].starts_with("127.0.0.1:"), "{}", peers[0]);
    let me = format!("unix peer pid {} ", std::process::id());
    assert!(peers[1].starts_with(&me), "{}", peers[1]);

    grace_tests::signal(site.pid, Signal::SIGUSR2);
    let line = tokio::task::block_in_place(|| g.expect_log("Graceful handoff of "));
    let new = grace_tests::new_pid_in_handoff(&line);
    let _new_guard = PidGuard(new);
    let new = new.to_string();
    for (conn, peer) in [&mut tcp, &mut unix].into_iter().zip(&peers) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let a = get_on_h1(conn, "/pid")
                .await
                .expect("the same connection answers");
            assert_eq!(a.connection, None, "not asked to close");
            if a.body == new {
                break;
            }
            assert_eq!(a.body, old);
            assert!(tokio::time::Instant::now() < deadline, "still on the old pid");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            &get_on_h1(conn, "/peer").await.unwrap().body,
            peer,
            "the same peer"
        );
    }
    // HTTP/2 is drained as before: GOAWAY, and the old process exits once it is gone.
    assert!(
        tokio::time::timeout(DEADLINE, h2.ready())
            .await
            .expect("GOAWAY in time")
            .is_err()
            || get_on_h2(&mut h2, "/pid").await.is_err(),
        "the HTTP/2 connection was told to go"
    );
    drop(h2);
    assert!(
        tokio::task::block_in_place(|| wait_until(DEADLINE, || !grace_tests::is_alive(site.pid))),
        "the old process exits"
    );
    assert_eq!(get_h2c(site.ports[1], "/pid").await.unwrap().body, new);
}

/// A keep-alive connection the new process does not take (it never asks for handed
/// connections) stays with the old process, which serves it as before: the next request is
/// answered by the old pid with `Connection: close`, at once, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_new_process_does_not_take_is_served_by_the_old_one_as_before() {
    let (mut g, site) = tokio::task::block_in_place(|| {
        start_httpprobe(command(HTTPPROBE, &[], &[("PROBE_TAKE_NO_HANDED", "1")]))
    });
    let old = site.pid.to_string();
    let mut h1 = connect_h1(site.ports[0]).await.unwrap();
    assert_eq!(get_on_h1(&mut h1, "/pid").await.unwrap().body, old);
    // A request in flight at the restart: its answer does not ask the client to close (the
    // connection is to be handed over once it is answered).
    let slow = tokio::spawn(async move {
        let a = get_on_h1(&mut h1, "/sleep?ms=1000").await;
        (a, h1)
    });
    tokio::task::block_in_place(|| g.expect_log("sleep request started ms=1000"));
    let new = tokio::task::block_in_place(|| restart(&mut g, site.pid, &site.ports));
    let _new_guard = PidGuard(new);
    let (a, mut h1) = slow.await.unwrap();
    let a = a.unwrap();
    assert_eq!((a.body.as_str(), a.connection), (old.as_str(), None));
    // Offered to the new process, which does not ask for handed connections: gracenet
    // answers "not taken" for it shortly after its `ready` (not the old process's 10 s wait
    // for an answer), and the old process serves the connection as before.
    let a = tokio::time::timeout(Duration::from_secs(5), get_on_h1(&mut h1, "/pid"))
        .await
        .expect("answered well within the old process's 10 s wait for an answer")
        .expect("the next request is answered");
    assert_eq!(a.body, old, "by the old process, which kept the connection");
    assert_eq!(a.connection.as_deref(), Some("close"), "drained as before");
    assert!(
        tokio::task::block_in_place(|| wait_until(DEADLINE, || !grace_tests::is_alive(site.pid))),
        "the old process exits once its connection is closed"
    );
    assert_eq!(get_h1(site.ports[0], "/pid").await.unwrap().body, new.to_string());
}

/// A slowloris that spans restarts: each restart hands its half-sent head to the next process
/// with the time it has already taken, so the header read timeout still counts from its
/// accept. (Each process used to start the timeout afresh: with restarts coming faster than
/// it, the connection was never closed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_handed_over_again_and_again_is_still_closed_at_its_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut g, site) = tokio::task::block_in_place(|| {
        start_httpprobe(command(HTTPPROBE, &[], &[("PROBE_HEADER_TIMEOUT_MS", "2000")]))
    });
    let port = site.ports[0];
    let slow = tokio::spawn(async move {
        let connected = std::time::Instant::now();
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\nX-Pad: ")
            .await
            .unwrap();
        // A byte every 100 ms, never the blank line; bounded at 60 s.
        for _ in 0..600 {
            if s.write_all(b"a").await.is_err() {
                return Ok(connected.elapsed());
            }
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(connected.elapsed()),
                Ok(Ok(n)) => return Err(format!("answered: {:?}", String::from_utf8_lossy(&buf[..n]))),
                Err(_) => {}
            }
        }
        Err("still open after 60 s".to_owned())
    });
    // A restart every 200 ms while it trickles (pacing, not synchronisation), for 10 s at
    // most: ten times as often as its timeout.
    let mut pid = site.pid;
    let mut guards = Vec::new();
    let mut restarts = 0;
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !slow.is_finished() && std::time::Instant::now() < until && restarts < 100 {
        pid = tokio::task::block_in_place(|| restart(&mut g, pid, &site.ports));
        guards.push(PidGuard(pid));
        restarts += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        slow.is_finished(),
        "the slow head outlived {restarts} restarts over 10 s (the header read timeout is 2 s)"
    );
    // Closed by its timeout, which counts from the accept (after the connect), not for
    // another reason (a hand-over that lost it).
    let closed_after = slow.await.unwrap().unwrap();
    assert!(
        closed_after >= Duration::from_secs(2),
        "closed after {closed_after:?}"
    );
    assert_eq!(get_h1(port, "/pid").await.unwrap().body, pid.to_string());
}

/// A client that sends its request and shuts its sending side (`nc -N`, a scripted health
/// check) is answered, however long the request takes, as Go's server answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_followed_by_a_half_close_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_g, site) = tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &[], &[])));
    for (path, answers) in [("/sleep?ms=300", 1), ("/sleep?ms=50", 2), ("/pid", 1)] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", site.ports[0]))
            .await
            .unwrap();
        let mut request = Vec::new();
        for _ in 0..answers {
            request.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        }
        s.write_all(&request).await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut got))
            .await
            .expect("closed in time")
            .expect("read");
        let got = String::from_utf8_lossy(&got);
        assert_eq!(got.matches("HTTP/1.1 200").count(), answers, "{path}: {got}");
        assert!(got.ends_with(&site.pid.to_string()), "{path}: {got}");
    }
}

/// One HTTP/1.1 response read from `s` (a Content-Length body): its head and body.
async fn read_response(s: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..1000 {
        if let Some(whole) = grace_tests::http::whole_h1_response(&got) {
            let (head, body) = String::from_utf8_lossy(&got[..whole])
                .split_once("\r\n\r\n")
                .map(|(h, b)| (h.to_lowercase(), b.to_owned()))
                .unwrap_or_default();
            return (head, body);
        }
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    panic!("no whole response in 1000 reads");
}

/// A keep-alive client in the middle of a large request head (100 KB of headers, sent
/// before the restart), pausing longer than the drain's idle grace, then finishing it: it is
/// answered, by the new process when it takes the connection, else by the old one: when the
/// new one does not take it, or when the connection cannot be handed (a request before that
/// named an `Upgrade`, after which the hand-over no longer follows the connection's bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_head_begun_before_a_restart_and_paused_is_answered() {
    use tokio::io::AsyncWriteExt;
    for (take, unfollowed_before) in [(true, false), (false, false), (true, true)] {
        let mut env = vec![("PROBE_IDLE_GRACE_MS", "100")];
        if !take {
            env.push(("PROBE_TAKE_NO_HANDED", "1"));
        }
        let (mut g, site) = tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &[], &env)));
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", site.ports[0]))
            .await
            .unwrap();
        if unfollowed_before {
            s.write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(read_response(&mut s).await.1, site.pid.to_string());
        } else {
            s.write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(read_response(&mut s).await.1, site.pid.to_string());
        }
        let mut head = b"GET /pid HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 100_000));
        head.extend_from_slice(b"\r\n");
        s.write_all(&head).await.unwrap();
        let new = tokio::task::block_in_place(|| restart(&mut g, site.pid, &site.ports));
        let _new = PidGuard(new);
        // The client pauses within its head, longer than the idle grace (the scenario itself).
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(b"\r\n").await.unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(
            head.starts_with("http/1.1 200"),
            "take={take} unfollowed={unfollowed_before}: {head}"
        );
        let by = if take && !unfollowed_before { new } else { site.pid };
        assert_eq!(body, by.to_string(), "take={take} unfollowed={unfollowed_before}");
    }
}

/// A TLS client trickling its first request's head when a restart comes: TLS connections are
/// not handed over, so the old process keeps it while it drains, and still closes it at its
/// header read timeout (it kept it until its stop timeout, 60 s, with a process per restart
/// alive meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_process_still_closes_a_slow_tls_head_at_its_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, root, mut g, site) =
        tokio::task::block_in_place(|| start_tls("tls-slow-drain", &[("PROBE_HEADER_TIMEOUT_MS", "2000")]));
    let port = site.ports[2];
    let mut tls = grace_tests::http::tls_connect(port, &root, &[b"http/1.1"])
        .await
        .unwrap();
    let connected = std::time::Instant::now();
    tls.write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let new = tokio::task::block_in_place(|| restart(&mut g, site.pid, &site.ports));
    let _new = PidGuard(new);
    // A byte every 100 ms, never the blank line, for 15 s at most (the stop timeout is 60 s).
    let mut closed = false;
    for _ in 0..150 {
        if tls.write_all(b"a").await.is_err() || tls.flush().await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(100), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => panic!("answered: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
    assert!(closed, "still open after {:?}", connected.elapsed());
    assert!(
        connected.elapsed() >= Duration::from_secs(2),
        "closed before its timeout"
    );
    assert!(
        tokio::task::block_in_place(|| wait_until(DEADLINE, || !grace_tests::is_alive(site.pid))),
        "the old process exits once it is closed"
    );
}

/// A first request's head begun before a restart, the client pausing within it longer than
/// the drain's idle grace: the old process (which hands no connection over here) answers it
/// once the head is whole, rather than closing the connection as idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_head_begun_before_a_restart_and_paused_is_answered() {
    use tokio::io::AsyncWriteExt;
    let env = [("PROBE_IDLE_GRACE_MS", "100"), ("PROBE_NO_HAND_OVER", "1")];
    let (mut g, site) = tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &[], &env)));
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", site.ports[0]))
        .await
        .unwrap();
    s.write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Read by the server before the restart: a request that answers shows it has read ours.
    assert_eq!(
        get_h1(site.ports[0], "/pid").await.unwrap().body,
        site.pid.to_string()
    );
    let new = tokio::task::block_in_place(|| restart(&mut g, site.pid, &site.ports));
    let _new = PidGuard(new);
    // The client pauses within its head, longer than the idle grace (the scenario itself).
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.write_all(b"\r\n").await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, site.pid.to_string());
}

/// The probe with a 100 ms idle grace (a draining process closes a connection it keeps that
/// soon), and a connection to its first port on which nothing has been sent.
async fn probe_with_short_grace() -> (ProcessGuard, Site, tokio::net::TcpStream) {
    let env = [("PROBE_IDLE_GRACE_MS", "100")];
    let (g, site) = tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &[], &env)));
    let s = tokio::net::TcpStream::connect(("127.0.0.1", site.ports[0]))
        .await
        .unwrap();
    (g, site, s)
}

/// Restarts the probe and waits until the old process has gone (well past its idle grace):
/// the new pid, and its guard.
fn restart_and_outlive_the_old(g: &mut ProcessGuard, site: &Site) -> (u32, PidGuard) {
    let new = restart(g, site.pid, &site.ports);
    let guard = PidGuard(new);
    assert!(
        wait_until(DEADLINE, || !grace_tests::is_alive(site.pid)),
        "the old process exits"
    );
    (new, guard)
}

/// A connection opened before a restart that has sent nothing yet (a browser's preconnect, a
/// pool's warm connection) goes to the new process as an idle one does: its first request,
/// sent once the old process has gone, is answered there, HTTP/1.1 or HTTP/2 alike (the new
/// process tells the protocol from the first bytes, as it does for a connection it accepts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sent_nothing_before_a_restart_is_answered_by_the_new_process() {
    let (mut g, site, silent_h1) = probe_with_short_grace().await;
    let silent_h2 = tokio::net::TcpStream::connect(("127.0.0.1", site.ports[0]))
        .await
        .unwrap();
    // Accepted by the old process: a port's connections are accepted in order, so one
    // answered after them was too.
    assert_eq!(
        get_h1(site.ports[0], "/pid").await.unwrap().body,
        site.pid.to_string()
    );
    let (new, _new) = tokio::task::block_in_place(|| restart_and_outlive_the_old(&mut g, &site));
    let mut h1 = grace_tests::http::h1_over(silent_h1).await.unwrap();
    let a = get_on_h1(&mut h1, "/pid").await.expect("answered, not closed");
    assert_eq!(a.body, new.to_string());
    assert_eq!(a.connection, None, "kept alive");
    let mut h2 = grace_tests::http::h2_over(silent_h2).await.unwrap();
    let a = get_on_h2(&mut h2, "/pid")
        .await
        .expect("HTTP/2 answered, not closed");
    assert_eq!(a.body, new.to_string());
}

/// A keep-alive request in flight across two restarts: by the time it is answered, the
/// process its server handed connections to has been replaced in turn and has gone. Its
/// response then tells the client to reconnect (`Connection: close`) rather than promise a
/// connection nobody will take; the client's next request goes to the newest process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_across_two_restarts_is_told_to_reconnect_not_left_on_a_dead_connection() {
    let env = [("PROBE_IDLE_GRACE_MS", "100")];
    let (mut g, site) = tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &[], &env)));
    let port = site.ports[0];
    let mut conn = connect_h1(port).await.unwrap();
    assert_eq!(
        get_on_h1(&mut conn, "/pid").await.unwrap().body,
        site.pid.to_string()
    );
    let long = tokio::spawn(async move {
        let a = get_on_h1(&mut conn, "/sleep?ms=3000").await;
        (a, conn)
    });
    tokio::task::block_in_place(|| g.expect_log("sleep request started ms=3000"));
    let second = tokio::task::block_in_place(|| restart(&mut g, site.pid, &site.ports));
    let _second = PidGuard(second);
    let third = tokio::task::block_in_place(|| restart(&mut g, second, &site.ports));
    let _third = PidGuard(third);
    assert!(
        tokio::task::block_in_place(|| wait_until(DEADLINE, || !grace_tests::is_alive(second))),
        "the second process, with nothing to finish, exits"
    );
    assert!(
        !long.is_finished(),
        "the scenario needs the request still in flight here"
    );
    let (a, mut conn) = long.await.unwrap();
    let a = a.expect("the long request is answered");
    assert_eq!(a.body, site.pid.to_string(), "by the first process");
    if a.connection.as_deref() != Some("close") {
        // Kept alive: then the connection must still be served once the first process has gone.
        assert!(
            tokio::task::block_in_place(|| wait_until(DEADLINE, || !grace_tests::is_alive(site.pid))),
            "the first process exits"
        );
        let next = get_on_h1(&mut conn, "/pid").await;
        assert!(
            next.as_ref().is_ok_and(|n| n.body == third.to_string()),
            "promised keep-alive, then: {next:?}"
        );
    }
    assert_eq!(get_h1(port, "/pid").await.unwrap().body, third.to_string());
}

/// An HTTP/1.0 client that asks to keep its connection (`Connection: keep-alive`, as
/// ApacheBench's `-k` does) keeps it across a restart: the connection goes to the new process
/// between requests, and its next request is answered there, long after the old one has gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_keep_alive_connection_is_handed_over() {
    use tokio::io::AsyncWriteExt;
    let (mut g, site, mut s) = probe_with_short_grace().await;
    let request = b"GET /pid HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    s.write_all(request).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.contains("connection: keep-alive"), "{head}");
    assert_eq!(body, site.pid.to_string());
    let (new, _new) = tokio::task::block_in_place(|| restart_and_outlive_the_old(&mut g, &site));
    s.write_all(request).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.0 200"), "{head}");
    assert_eq!(body, new.to_string(), "answered by the new process");
}

/// A keep-alive connection whose last request had a chunked body (a streamed upload) is
/// handed over at a restart once that body has ended, as any other: its next request is
/// answered by the new process, long after the old one has gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_after_a_chunked_upload_is_handed_over() {
    use tokio::io::AsyncWriteExt;
    let (mut g, site, mut s) = probe_with_short_grace().await;
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n3\r\n, w\r\n0\r\nTrailer: t\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "8 bytes");
    let (new, _new) = tokio::task::block_in_place(|| restart_and_outlive_the_old(&mut g, &site));
    s.write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, new.to_string(), "answered by the new process");
}

/// A client that pipelined requests behind a slow one when a stop comes: every request the
/// server has read is answered, the last one with `Connection: close`, before the process
/// exits (the hand-over's framing tells where they end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pipelined_behind_one_in_flight_at_a_stop_are_all_answered() {
    use tokio::io::AsyncWriteExt;
    let (mut g, site) = tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &[], &[])));
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", site.ports[0]))
        .await
        .unwrap();
    let mut burst = b"GET /sleep?ms=700 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    for _ in 0..3 {
        burst.extend_from_slice(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    s.write_all(&burst).await.unwrap();
    tokio::task::block_in_place(|| g.expect_log("sleep request started ms=700"));
    g.signal(Signal::SIGTERM);
    // Everything until the server closes: the four responses may come in one read.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..1000 {
        let n = tokio::time::timeout(DEADLINE, tokio::io::AsyncReadExt::read(&mut s, &mut buf))
            .await
            .expect("the responses, then the close, in time")
            .expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_lowercase();
    let responses: Vec<&str> = text.split("http/1.1 ").skip(1).collect();
    assert_eq!(responses.len(), 4, "every request read is answered: {text}");
    let mut closes = Vec::new();
    for (i, r) in responses.iter().enumerate() {
        assert!(r.starts_with("200"), "response {i}: {r}");
        assert!(r.ends_with(&site.pid.to_string()), "response {i}: {r}");
        closes.push(r.contains("connection: close"));
    }
    assert_eq!(closes, [false, false, false, true], "only the last says close");
    let status = tokio::task::block_in_place(|| g.wait_timeout(DEADLINE)).expect("exits");
    assert!(status.success(), "{status}");
}
