//! Real HTTP clients for the tests: HTTP/1.1, HTTP/2 with prior knowledge, and TLS with a
//! chosen ALPN list, each on a fresh connection; and a keep-alive client that counts
//! failures while it runs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// An answer: status, protocol version, body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: StatusCode,
    /// HTTP/1.1 or HTTP/2.
    pub version: Version,
    /// The `Connection` header, if any.
    pub connection: Option<String>,
    /// The body as text.
    pub body: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn finish(resp: http::Response<hyper::body::Incoming>) -> Result<Answer, BoxError> {
    let status = resp.status();
    let version = resp.version();
    let connection = resp
        .headers()
        .get(http::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        version,
        connection,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn request(path: &str, version: Version) -> Request<Empty<Bytes>> {
    let mut req = Request::get(format!("http://127.0.0.1{path}"))
        .body(Empty::new())
        .expect("a valid request");
    *req.version_mut() = version;
    req
}

/// A keep-alive HTTP/1.1 connection to `127.0.0.1:port`, for requests one after another
/// ([`get_on_h1`]).
pub type H1Connection = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// A cleartext HTTP/2 (prior knowledge) connection, for concurrent streams ([`get_on_h2`]).
pub type H2Connection = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// Opens a keep-alive HTTP/1.1 connection to `127.0.0.1:port`.
pub async fn connect_h1(port: u16) -> Result<H1Connection, BoxError> {
    h1_over(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?).await
}

/// Opens a cleartext HTTP/2 (prior knowledge) connection to `127.0.0.1:port`.
pub async fn connect_h2c(port: u16) -> Result<H2Connection, BoxError> {
    h2_over(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?).await
}

/// Opens a keep-alive HTTP/1.1 connection over the Unix socket at `path`.
pub async fn connect_h1_unix(path: &std::path::Path) -> Result<H1Connection, BoxError> {
    h1_over(tokio::net::UnixStream::connect(path).await?).await
}

/// Opens an HTTP/2 (prior knowledge) connection over the Unix socket at `path`.
pub async fn connect_h2_unix(path: &std::path::Path) -> Result<H2Connection, BoxError> {
    h2_over(tokio::net::UnixStream::connect(path).await?).await
}

/// A keep-alive HTTP/1.1 connection over `io`, already connected (nothing is sent yet).
pub async fn h1_over<T>(io: T) -> Result<H1Connection, BoxError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// An HTTP/2 (prior knowledge) connection over `io`, already connected: the preface is sent
/// now.
pub async fn h2_over<T>(io: T) -> Result<H2Connection, BoxError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// GET `path` as the next request of a keep-alive HTTP/1.1 connection, once the connection
/// can take it (the last answer read).
pub async fn get_on_h1(conn: &mut H1Connection, path: &str) -> Result<Answer, BoxError> {
    conn.ready().await?;
    finish(conn.send_request(request(path, Version::HTTP_11)).await?).await
}

/// GET `path` as a new stream of an HTTP/2 connection (clones of it run streams at once).
pub async fn get_on_h2(conn: &mut H2Connection, path: &str) -> Result<Answer, BoxError> {
    finish(conn.send_request(request(path, Version::HTTP_2)).await?).await
}

/// GET `path` over HTTP/1.1 on a new connection to `127.0.0.1:port`.
pub async fn get_h1(port: u16, path: &str) -> Result<Answer, BoxError> {
    get_on_h1(&mut connect_h1(port).await?, path).await
}

/// GET `path` over cleartext HTTP/2 (prior knowledge) on a new connection.
pub async fn get_h2c(port: u16, path: &str) -> Result<Answer, BoxError> {
    get_on_h2(&mut connect_h2c(port).await?, path).await
}

/// GET `path` over TLS on a new connection, trusting `root` (DER) for `localhost`,
/// offering `alpn`. Returns the answer and the server's certificate (DER).
pub async fn get_tls(
    port: u16,
    path: &str,
    root: &[u8],
    alpn: &[&[u8]],
) -> Result<(Answer, Vec<u8>), BoxError> {
    let tls = tls_connect(port, root, alpn).await?;
    let (_, session) = tls.get_ref();
    let peer = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let answer = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        finish(send.send_request(request(path, Version::HTTP_2)).await?).await?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        finish(send.send_request(request(path, Version::HTTP_11)).await?).await?
    };
    Ok((answer, peer))
}

/// A finished TLS handshake with `127.0.0.1:port`, trusting `root` (DER) for `localhost`,
/// offering `alpn`, as a new client (no session to resume).
pub async fn tls_connect(
    port: u16,
    root: &[u8],
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, BoxError> {
    tls_connect_as(port, tls_client(root, alpn)?).await
}

/// A TLS client trusting `root` (DER) for `localhost`, offering `alpn`. Its connections
/// share one session store: each offers the session (ticket) the last one was given.
pub fn tls_client(root: &[u8], alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, BoxError> {
    tls_client_offering(
        root,
        alpn,
        rustls::crypto::aws_lc_rs::DEFAULT_CIPHER_SUITES,
        rustls::DEFAULT_VERSIONS,
    )
}

/// As [`tls_client`], offering `suites` in that order of preference, and `versions`.
pub fn tls_client_offering(
    root: &[u8],
    alpn: &[&[u8]],
    suites: &[rustls::SupportedCipherSuite],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<rustls::ClientConfig>, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(root.to_vec()))?;
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: suites.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A finished TLS handshake with `127.0.0.1:port` as `client` (see [`tls_client`]).
pub async fn tls_connect_as(
    port: u16,
    client: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, BoxError> {
    let connector = tokio_rustls::TlsConnector::from(client);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    Ok(connector.connect("localhost".try_into()?, tcp).await?)
}

/// What a [`Hammer`] saw.
#[derive(Debug, Default)]
pub struct HammerStats {
    /// Successful answers, by body (the pid that answered).
    pub by_body: std::collections::BTreeMap<String, usize>,
    /// Failed requests, as text.
    pub failures: Vec<String>,
}

/// A busy client on hyper-util's pooled client: keep-alive HTTP/1.1, or HTTP/2 with prior
/// knowledge, sending `GET path` back to back until stopped (at most `max` requests).
pub struct Hammer {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<HammerStats>,
}

impl Hammer {
    /// Starts hammering `127.0.0.1:port`.
    pub fn start(port: u16, path: &str, http2: bool, max: usize) -> Hammer {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let uri: http::Uri = format!("http://127.0.0.1:{port}{path}")
            .parse()
            .expect("a valid URI");
        let task = tokio::spawn(async move {
            let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
            builder
                .http2_only(http2)
                .pool_idle_timeout(Duration::from_secs(30));
            let client = builder.build_http::<Empty<Bytes>>();
            let mut stats = HammerStats::default();
            for _ in 0..max {
                if *stopped.borrow_and_update() {
                    break;
                }
                let result = tokio::time::timeout(Duration::from_secs(10), async {
                    // Retry what the server's GOAWAY marked unprocessed, as real clients do.
                    let mut attempts = 0;
                    loop {
                        let req = Request::get(uri.clone())
                            .body(Empty::new())
                            .expect("a valid request");
                        match client.request(req).await {
                            Err(e) if attempts < 3 && crate::load::unprocessed(&e) => attempts += 1,
                            other => return other,
                        }
                    }
                })
                .await;
                match result {
                    Ok(Ok(resp)) if resp.status() == StatusCode::OK => match finish(resp).await {
                        Ok(a) => *stats.by_body.entry(a.body).or_default() += 1,
                        Err(e) => stats.failures.push(format!("body: {e}")),
                    },
                    Ok(Ok(resp)) => stats.failures.push(format!("status {}", resp.status())),
                    Ok(Err(e)) => stats.failures.push(format!("{e:?}")),
                    Err(_) => stats.failures.push("timed out".into()),
                }
            }
            stats
        });
        Hammer { stop, task }
    }

    /// Stops and returns what it saw.
    pub async fn stop(self) -> HammerStats {
        let _ = self.stop.send(true);
        self.task.await.expect("hammer task")
    }
}

/// A self-signed certificate for `localhost`, as PEM files in `dir`, returning the
/// certificate's DER.
pub fn write_cert(dir: &std::path::Path, cert_name: &str, key_name: &str) -> Vec<u8> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
    std::fs::write(dir.join(cert_name), cert.cert.pem()).expect("write cert");
    std::fs::write(dir.join(key_name), cert.key_pair.serialize_pem()).expect("write key");
    cert.cert.der().to_vec()
}

/// The length of the whole HTTP/1.1 response (its head and its `Content-Length` body) at the
/// start of `got`, once all of it is there: for tests that read raw bytes from a socket.
pub fn whole_h1_response(got: &[u8]) -> Option<usize> {
    let end = got.windows(4).position(|w| w == b"\r\n\r\n")?;
    let length: usize = String::from_utf8_lossy(&got[..end])
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    let whole = end + 4 + length;
    (got.len() >= whole).then_some(whole)
}
