//! TLS settings for a server: rustls, from PEM files or a caller's own configuration, with
//! ALPN offering HTTP/2 and HTTP/1.1.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{CipherSuite, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;
use crate::session_tickets::TicketKeys;

/// A TLS configuration for one server address.
///
/// Loaded by each process at startup, so a certificate renewed on disk is served after the
/// next restart.
///
/// Built from PEM, it lets every client resume its session (a shorter handshake, without
/// the certificate's signature) with a ticket that carries the session itself, one ticket per
/// connection: no cache on the server to outgrow. The server hands its ticket keys to the next
/// process at a restart, so clients resume with the new process too (when the server starts
/// its own generation: with [`Server::generation`](crate::Server::generation) the state
/// handed over is the application's, and a new process has new keys). Keys rotate every six
/// hours. A configuration of the caller's own ([`Tls::from_config`]) is given the keys too,
/// unless it has a ticketer of its own or sends no tickets.
///
/// Built from PEM, it prefers AES-128-GCM (the cheapest handshake, as Go does) unless the
/// client's first choice is ChaCha20-Poly1305 (a client without AES instructions); a
/// configuration of the caller's own keeps its own cipher suite order.
#[derive(Clone)]
pub struct Tls {
    pub(crate) config: Arc<ServerConfig>,
    /// Built from PEM: the same, following the client's order of cipher suites, for a client
    /// whose first choice is ChaCha20-Poly1305 (see [`Tls::for_client`]).
    follow_client: Option<Arc<ServerConfig>>,
    /// No ticketer of its own: the server seals its session tickets with the keys it hands
    /// from process to process.
    server_tickets: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("alpn", &self.config.alpn_protocols)
            .finish()
    }
}

impl Tls {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or
    /// SEC1).
    ///
    /// # Errors
    /// [`Error::TlsFile`] naming the file when it is missing, unreadable or holds no
    /// certificate / key; [`Error::TlsConfig`] when the key does not fit the certificate.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Tls, Error> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let chain = parse_chain(cert, &read_file("certificate", cert)?)?;
        let key_der = parse_key(key, &read_file("private key", key)?)?;
        build(cert, key, chain, key_der)
    }

    /// Builds the configuration from PEM text in memory (a certificate chain, leaf first, and
    /// a private key), for certificates that do not come from files: generated at startup,
    /// or fetched from a secret store.
    ///
    /// # Errors
    /// As [`from_pem_files`](Self::from_pem_files), the files being named `<memory>`.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Tls, Error> {
        let memory = Path::new("<memory>");
        let chain = parse_chain(memory, cert_pem)?;
        let key = parse_key(memory, key_pem)?;
        build(memory, memory, chain, key)
    }

    /// Uses a caller's rustls configuration. When it offers no ALPN protocols, `h2` and
    /// `http/1.1` are offered. When it has no ticketer of its own (rustls's default) and
    /// sends tickets, the server gives it its ticket keys, as for PEM files: sessions then
    /// resume for any number of clients and across restarts, where rustls's default cache
    /// holds 256 sessions and dies with the process. Set `send_tls13_tickets = 0` for no
    /// tickets at all, or a ticketer of your own to keep it.
    pub fn from_config(mut config: ServerConfig) -> Tls {
        if config.alpn_protocols.is_empty() {
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        }
        let server_tickets = !config.ticketer.enabled() && config.send_tls13_tickets > 0;
        Tls {
            config: Arc::new(config),
            follow_client: None,
            server_tickets,
        }
    }

    /// The configuration for a client whose `ClientHello` offers `suites`, in its order of
    /// preference. Built from PEM, the server prefers AES-128-GCM (with SHA-256: the cheapest
    /// handshake, as Go does), unless the client's first choice of AES-GCM and
    /// ChaCha20-Poly1305 is ChaCha20 (a client without AES instructions): then its order.
    pub(crate) fn for_client(&self, suites: &[CipherSuite]) -> &Arc<ServerConfig> {
        let chacha_first = suites
            .iter()
            .find(|s| is_aes_gcm(**s) || is_chacha(**s))
            .is_some_and(|s| is_chacha(*s));
        match &self.follow_client {
            Some(config) if chacha_first => config,
            _ => &self.config,
        }
    }

    /// Whether connections need their `ClientHello` read before a configuration is chosen.
    pub(crate) fn chooses_by_client(&self) -> bool {
        self.follow_client.is_some()
    }

    /// Whether the server gives this configuration its session ticket keys.
    pub(crate) fn takes_ticket_keys(&self) -> bool {
        self.server_tickets
    }

    /// This configuration with its session tickets sealed by `keys`, when it takes them.
    pub(crate) fn with_ticket_keys(self, keys: &Arc<TicketKeys>) -> Tls {
        if !self.server_tickets {
            return self;
        }
        let give = |config: &Arc<ServerConfig>| {
            let mut config = ServerConfig::clone(config);
            config.ticketer = keys.clone();
            Arc::new(config)
        };
        Tls {
            config: give(&self.config),
            follow_client: self.follow_client.as_ref().map(give),
            server_tickets: true,
        }
    }
}

/// The most a certificate or key file may hold: a PEM chain is a few KiB (a long chain with
/// its intermediates, tens); anything larger is not one.
pub const MAX_PEM_FILE: u64 = 1 << 20;

/// Reads a certificate or key file: a regular file of at most [`MAX_PEM_FILE`] bytes. A FIFO,
/// a device (`/dev/zero`), a socket or a directory is refused before it is read (opened
/// without waiting for a FIFO's writer), never read without end.
fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    use std::io::Read as _;
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    let bad = |reason: String| Error::TlsFile {
        what,
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| bad(format!("cannot read it: {e}")))?;
    let meta = file.metadata().map_err(|e| bad(format!("cannot read it: {e}")))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let is = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO (named pipe)"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(bad(format!("not a regular file ({is}): expected a PEM file")));
    }
    let too_large = || {
        bad(format!(
            "larger than {} KiB: expected a PEM file (a few KiB)",
            MAX_PEM_FILE >> 10
        ))
    };
    if meta.len() > MAX_PEM_FILE {
        return Err(too_large());
    }
    let mut pem = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // Bounded even if the file grows while it is read.
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut pem)
        .map_err(|e| bad(format!("cannot read it: {e}")))?;
    if pem.len() as u64 > MAX_PEM_FILE {
        return Err(too_large());
    }
    Ok(pem)
}

fn build(
    cert: &Path,
    key: &Path,
    chain: Vec<CertificateDer<'static>>,
    key_der: PrivateKeyDer<'static>,
) -> Result<Tls, Error> {
    let problem = |e: rustls::Error| Error::TlsConfig {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: config_problem(&e),
    };
    // AES-128-GCM first, as Go does (SHA-256 in the key schedule, where AES-256-GCM takes
    // SHA-384): against OpenSSL clients, which put AES-256 first, a new connection cost the
    // server 7-10 % less CPU, and a saturated client made 1.5-7 % more connections a second
    // (with `for_client`'s read of the ClientHello counted). A stable sort: the rest keep
    // rustls's order. `for_client` keeps ChaCha20 for clients that prefer it.
    //
    // aws-lc-rs, rustls's default provider: it has post-quantum key exchange (X25519MLKEM768,
    // Go's default since 1.24), which ring lacks and for which rustls 0.23.48 deprecated its
    // ring provider. (The figures above were measured with ring.)
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|s| !is_aes_128(s.suite()));
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(problem)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(problem)?;
    config.ignore_client_order = true;
    // Resumption for every client, not only the last few hundred: rustls's default keeps
    // sessions in a 256-entry cache, which 128 clients making a connection per request fill
    // (two tickets each), so a busier server did full handshakes only. The server gives this
    // configuration its ticket keys (`with_ticket_keys`): a ticket then carries its session,
    // and needs no room on the server.
    //
    // One ticket per connection, as Go's crypto/tls: a client resuming makes a new ticket
    // each time, and the second ticket (rustls's default) cost each new connection ~7 % of
    // the client's CPU and the server a ticket's encryption, to be thrown away by most clients.
    config.send_tls13_tickets = 1;
    let mut follow_client = config.clone();
    follow_client.ignore_client_order = false;
    let mut tls = Tls::from_config(config);
    tls.follow_client = Some(Tls::from_config(follow_client).config);
    Ok(tls)
}

/// rustls's error about a certificate and key, in words: which of the two to change, and what
/// is supported.
fn config_problem(e: &rustls::Error) -> String {
    use rustls::{Error as E, InconsistentKeys};
    match e {
        E::InconsistentKeys(InconsistentKeys::KeyMismatch) => "the private key does not match the \
            certificate (its public key is not the certificate's): give the key the certificate \
            was issued for, or the certificate of this key"
            .into(),
        E::InconsistentKeys(InconsistentKeys::Unknown) => "cannot check that the private key \
            matches the certificate (the key cannot tell its public key)"
            .into(),
        E::General(text) if text.starts_with("failed to parse") => format!(
            "the private key is of an unsupported kind or size ({text}): supported are RSA \
             keys of 2048 to 8192 bits, ECDSA keys on P-256, P-384 or P-521, and Ed25519 keys"
        ),
        e => e.to_string(),
    }
}

fn is_aes_128(suite: CipherSuite) -> bool {
    matches!(
        suite,
        CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

fn is_aes_gcm(suite: CipherSuite) -> bool {
    is_aes_128(suite)
        || matches!(
            suite,
            CipherSuite::TLS13_AES_256_GCM_SHA384
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        )
}

fn is_chacha(suite: CipherSuite) -> bool {
    matches!(
        suite,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    )
}

fn parse_chain(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bad = |reason: String| Error::TlsFile {
        what: "certificate",
        path: PathBuf::from(path),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(pem_problem(&e)))?;
    let Some(leaf) = chain.first() else {
        return Err(bad(
            "no \"BEGIN CERTIFICATE\" block: expected a PEM certificate chain".into(),
        ));
    };
    warn_if_not_valid_now(path, leaf);
    Ok(chain)
}

fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    let bad = |reason: String| Error::TlsFile {
        what: "private key",
        path: PathBuf::from(path),
        reason,
    };
    let text = String::from_utf8_lossy(pem);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(bad(format!(
            "the key is encrypted with a passphrase, which a server cannot type: decrypt it once (`openssl pkey -in {} -out key.pem`, which asks for the passphrase) and give the decrypted file, readable only by the server's user",
            path.display()
        )));
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        bad(match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no private key block: expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\"".into()
            }
            e => pem_problem(&e),
        })
    })
}

/// A PEM error as a sentence, never a dump of bytes.
fn pem_problem(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    let text = |bytes: &[u8]| {
        let s = String::from_utf8_lossy(bytes);
        let s: String = s.chars().filter(|c| !c.is_control()).take(60).collect();
        s
    };
    match e {
        E::MissingSectionEnd { end_marker } => format!(
            "malformed PEM: a block has no \"-----END {}-----\" line (is the file cut short?)",
            text(end_marker)
        ),
        E::IllegalSectionStart { line } => {
            format!("malformed PEM: a malformed BEGIN line {:?}", text(line))
        }
        E::Base64Decode(_) => "malformed PEM: a block's base64 text is invalid (is the file damaged?)".into(),
        E::NoItemsFound => "no PEM block found".into(),
        _ => "malformed PEM".into(),
    }
}

/// Warns (once, when the configuration is built) about a leaf certificate outside its
/// validity period: clients will refuse it, and the log says why before they do.
fn warn_if_not_valid_now(path: &Path, leaf: &CertificateDer<'_>) {
    if let Some(problem) =
        crate::certificate::Validity::of(leaf).and_then(|v| v.problem(std::time::SystemTime::now()))
    {
        crate::log::warn!(
            path = %path.display(),
            %problem,
            "the TLS certificate is not valid now: clients will refuse it; serving it anyway"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;
    use std::os::unix::fs::OpenOptionsExt as _;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gracehttp-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn loads_a_good_pair_and_offers_h2() {
        let d = dir("good");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(d.join("c.pem"), cert.cert.pem()).unwrap();
        std::fs::write(d.join("k.pem"), cert.key_pair.serialize_pem()).unwrap();
        let tls = Tls::from_pem_files(d.join("c.pem"), d.join("k.pem")).unwrap();
        assert_eq!(
            tls.config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A client offering post-quantum key exchange (as Chrome, Firefox, Go 1.24 and OpenSSL 3.5
    /// do) gets it: X25519MLKEM768, which rustls's ring provider lacks (why it was deprecated).
    #[test]
    fn a_client_offering_post_quantum_key_exchange_gets_it() {
        use rustls::{ClientConfig, ClientConnection, NamedGroup, ServerConnection};
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let tls = Tls::from_pem(
            cert.cert.pem().as_bytes(),
            cert.key_pair.serialize_pem().as_bytes(),
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let client =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        assert_eq!(
            client.crypto_provider().kx_groups[0].name(),
            NamedGroup::X25519MLKEM768,
            "the client offers it first"
        );
        let mut client = ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap()).unwrap();
        let mut server = ServerConnection::new(tls.config.clone()).unwrap();
        // The handshake in memory: a bounded number of flights each way.
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            server.read_tls(&mut &wire[..]).unwrap();
            server.process_new_packets().unwrap();
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            client.read_tls(&mut &wire[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(!server.is_handshaking(), "the handshake finished");
        assert_eq!(
            server.negotiated_key_exchange_group().map(|g| g.name()),
            Some(NamedGroup::X25519MLKEM768)
        );
    }

    #[test]
    fn a_configuration_without_a_ticketer_of_its_own_takes_the_servers_keys() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let config = || {
            ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.cert.der().clone()],
                    PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap(),
                )
                .unwrap()
        };
        let keys = TicketKeys::new().unwrap();
        let given = Tls::from_config(config());
        assert!(given.takes_ticket_keys(), "rustls's default: no ticketer");
        let given = given.with_ticket_keys(&keys);
        assert!(given.config.ticketer.enabled());
        let sealed = given.config.ticketer.encrypt(b"session").unwrap();
        assert_eq!(
            keys.decrypt(&sealed).as_deref(),
            Some(&b"session"[..]),
            "sealed with the server's keys"
        );

        let mut no_tickets = config();
        no_tickets.send_tls13_tickets = 0;
        let kept = Tls::from_config(no_tickets).with_ticket_keys(&keys);
        assert!(
            !kept.config.ticketer.enabled(),
            "no tickets asked for: none given"
        );

        let mut own = config();
        own.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
        let kept = Tls::from_config(own).with_ticket_keys(&keys);
        assert_eq!(
            keys.decrypt(&kept.config.ticketer.encrypt(b"session").unwrap()),
            None,
            "its own ticketer kept"
        );
    }

    #[test]
    fn bad_files_are_named_with_the_reason() {
        let d = dir("bad");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(d.join("c.pem"), cert.cert.pem()).unwrap();
        std::fs::write(d.join("k.pem"), cert.key_pair.serialize_pem()).unwrap();
        std::fs::write(d.join("other-k.pem"), other.key_pair.serialize_pem()).unwrap();
        std::fs::write(d.join("garbage.pem"), "hello, not a certificate\n").unwrap();
        std::fs::write(
            d.join("broken.pem"),
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = |c: &str, k: &str| Tls::from_pem_files(d.join(c), d.join(k)).unwrap_err().to_string();

        let e = err("missing.pem", "k.pem");
        assert!(
            e.contains("TLS certificate file") && e.contains("missing.pem: cannot read it"),
            "{e}"
        );
        let e = err("garbage.pem", "k.pem");
        assert!(e.contains("garbage.pem: no \"BEGIN CERTIFICATE\" block"), "{e}");
        let e = err("broken.pem", "k.pem");
        assert!(e.contains("broken.pem: malformed PEM"), "{e}");
        let e = err("c.pem", "garbage.pem");
        assert!(
            e.contains("TLS private key file") && e.contains("no private key block"),
            "{e}"
        );
        let e = err("c.pem", "missing-key.pem");
        assert!(e.contains("missing-key.pem: cannot read it"), "{e}");
        let e = err("c.pem", "other-k.pem");
        assert!(e.starts_with("TLS configuration from"), "{e}");
        assert!(
            e.ends_with("the private key does not match the certificate (its public key is not the certificate's): give the key the certificate was issued for, or the certificate of this key"),
            "in words, not rustls's KeyMismatch: {e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A throwaway 1024-bit RSA key (`openssl genrsa 1024`): too small for aws-lc-rs.
    const RSA_1024: &str = r"-----BEGIN RSA PRIVATE KEY-----
MIICXAIBAAKBgQDLimszyMWADG0CwFlvPTUJNOWz4CtJuZIb0NtsjgbSvvSF+61z
bmBI/wq9NMv2KXrPJb8F+YQB0T5WSrc8WHjXw8Xg6JQ+x4v0eN2Y7w6Cby+ETVcK
yc7DnvPNpJeJiksPiCLEoMBSG2y5iRQ/a7kztNjNSDVjlAaOPH+ViM7Q1wIDAQAB
AoGAQ51w7Vv12ArIr9BMJXr0wmEzKWT/nFcsJVdlfRNVSu8qddPck+sHy1gGLkJ6
uwSeim/knEx+QMhM6AecBUzyn0r8VbaRRJsyPfLZ67451Z4hiwAuDKYKVeXUKgRV
K/6XqVkMGzdCL4IX6uQnvyDqSFF+BjIly/EHUvE8J7BfbAECQQDmHPI/1fN5tEeT
1XEuxTakwwq7dDVMLgkLTdlbjm61hzOnhauWOrzHZVq28mx+Qsq8tOPnquBbLsdv
zWkJLaYBAkEA4nA2J1CbPBOntTvpDTqWco90pW20+gkluHzb81jlWuO50ND5cOaP
gR5e5vwTMXVoZVD8k8AkrAFMDhjaK1Rm1wJBAIopdRX46s/2+0b6z5MqW+2/IZF9
a4bK2SlNW6UKNtSNUelSa7yulawO4dGYaqXAiqOU5IWzZjO5OYuaRGd7XgECQFbB
MS5M5rzUtvtr0bVczglkRweeiakGWipdxBNu6qiw+R81AWytGSwaC7gpudzII9A1
gB/HjQVNlesMwIG7W48CQHgK1fgCoygcc0/+kWB7PEIsiYwwQ2LpSLVeoU2PyYUr
4wzUGH5XgjNRELjKYacbyF7KoX45PWk7a0LHiafq+XA=
-----END RSA PRIVATE KEY-----
";

    #[test]
    fn an_unsupported_key_says_what_is_supported() {
        let d = dir("rsa1024");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(d.join("c.pem"), cert.cert.pem()).unwrap();
        std::fs::write(d.join("k.pem"), RSA_1024).unwrap();
        let e = Tls::from_pem_files(d.join("c.pem"), d.join("k.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the private key is of an unsupported kind or size")
                && e.contains(
                    "RSA keys of 2048 to 8192 bits, ECDSA keys on P-256, P-384 or P-521, and Ed25519 keys"
                ),
            "{e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Loads the pair in a thread, for at most 20 s: a load that blocks (a FIFO with no
    /// writer) fails the test instead of hanging it.
    fn load_within(cert: PathBuf, key: PathBuf) -> Result<Tls, Error> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(Tls::from_pem_files(cert, key));
        });
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("the load returned within 20 s")
    }

    #[test]
    fn a_fifo_a_device_a_directory_or_a_huge_file_is_refused_without_reading_it() {
        let d = dir("special");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(d.join("c.pem"), cert.cert.pem()).unwrap();
        std::fs::write(d.join("k.pem"), cert.key_pair.serialize_pem()).unwrap();
        let fifo = d.join("fifo.pem");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // Sparse: no disk taken.
        let huge = d.join("huge.pem");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(MAX_PEM_FILE + 1)
            .unwrap();

        let e = load_within(fifo.clone(), d.join("k.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TLS certificate file") && e.contains("not a regular file (a FIFO (named pipe))"),
            "{e}"
        );
        let e = load_within(d.join("c.pem"), fifo.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("TLS private key file") && e.contains("a FIFO"), "{e}");
        let e = load_within("/dev/zero".into(), d.join("k.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file (a character device)"), "{e}");
        let e = load_within(d.clone(), d.join("k.pem")).unwrap_err().to_string();
        assert!(e.contains("not a regular file (a directory)"), "{e}");
        let e = load_within(huge, d.join("k.pem")).unwrap_err().to_string();
        assert!(e.contains("larger than 1024 KiB"), "{e}");
        // Unblocks a load that waits on the FIFO (before the check did), so the thread ends.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
