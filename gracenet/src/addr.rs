//! The address forms a Go user writes (`:8080`, `[::]:8080`, `localhost:8080`,
//! `unix:/run/app.sock`), and which inherited sockets each one means.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::Error;
use crate::socket::LocalAddr;

/// An address to listen on, parsed from the forms Go's `net.Listen` accepts.
///
/// | form                                  | meaning                                        |
/// |---------------------------------------|------------------------------------------------|
/// | `:8080`, `0.0.0.0:8080`, `[::]:8080`  | every local address, IPv6 and IPv4 (dual-stack `[::]`, as Go does) |
/// | `127.0.0.1:8080`, `[::1]:8080`        | that one IP address                            |
/// | `localhost:8080`                      | the host's addresses, resolved when listening (IPv4 first, as Go) |
/// | `unix:/run/app.sock`                  | a Unix socket at that path                     |
/// | `unix:@name`                          | a Unix socket in Linux's abstract namespace    |
///
/// Port `0` asks the kernel for a free port when binding, and when inheriting it matches an
/// inherited socket on the same IP with any port, so a server that listens on port 0 keeps
/// its port across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// Every local address on `port`.
    AnyIp {
        /// The port; 0 for any.
        port: u16,
    },
    /// One IP address and port.
    Ip(SocketAddr),
    /// A host name resolved when listening.
    Host {
        /// The name as written.
        host: String,
        /// The port; 0 for any.
        port: u16,
    },
    /// A Unix socket path.
    UnixPath(PathBuf),
    /// A name in Linux's abstract Unix socket namespace.
    UnixAbstract(Vec<u8>),
}

const EXPECTED: &str =
    "expected host:port (\":8080\", \"127.0.0.1:8080\", \"[::1]:8080\", \"localhost:8080\") or unix:/path";

impl FromStr for ListenAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = |reason: &'static str| Error::InvalidAddress {
            addr: s.to_owned(),
            reason,
        };
        if let Some(rest) = s.strip_prefix("unix:") {
            if let Some(name) = rest.strip_prefix('@') {
                if name.is_empty() {
                    return Err(invalid("expected a name after unix:@"));
                }
                return Ok(ListenAddr::UnixAbstract(name.as_bytes().to_vec()));
            }
            if rest.is_empty() {
                return Err(invalid("expected a socket path after unix:"));
            }
            if rest.contains('\0') {
                return Err(invalid("a Unix socket path cannot contain a NUL byte"));
            }
            return Ok(ListenAddr::UnixPath(PathBuf::from(rest)));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| invalid(EXPECTED))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| invalid("expected a port number from 0 to 65535 after the last ':'"))?;
        if host.is_empty() {
            return Ok(ListenAddr::AnyIp { port });
        }
        let ip = if let Some(inner) = host.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| invalid("expected ']' to close the IPv6 address"))?;
            IpAddr::V6(
                inner
                    .parse()
                    .map_err(|_| invalid("expected an IPv6 address inside [ ]"))?,
            )
        } else if host.contains(':') {
            return Err(invalid("an IPv6 address needs brackets: \"[::1]:8080\""));
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            ip
        } else if host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Ok(ListenAddr::Host {
                host: host.to_owned(),
                port,
            });
        } else {
            return Err(invalid("expected an IP address or a host name before the port"));
        };
        Ok(if ip.is_unspecified() {
            ListenAddr::AnyIp { port }
        } else {
            ListenAddr::Ip(SocketAddr::new(ip, port))
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::AnyIp { port } => write!(f, ":{port}"),
            ListenAddr::Ip(a) => write!(f, "{a}"),
            ListenAddr::Host { host, port } => write!(f, "{host}:{port}"),
            ListenAddr::UnixPath(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::UnixAbstract(n) => write!(f, "unix:@{}", String::from_utf8_lossy(n)),
        }
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(a: SocketAddr) -> Self {
        if a.ip().is_unspecified() {
            ListenAddr::AnyIp { port: a.port() }
        } else {
            ListenAddr::Ip(a)
        }
    }
}

impl ListenAddr {
    /// Whether this is an IP address (as opposed to a Unix socket).
    pub fn is_ip(&self) -> bool {
        matches!(
            self,
            ListenAddr::AnyIp { .. } | ListenAddr::Ip(_) | ListenAddr::Host { .. }
        )
    }

    /// The socket addresses to bind, in order of preference.
    pub(crate) fn resolve(&self) -> Result<Vec<SocketAddr>, Error> {
        match self {
            ListenAddr::AnyIp { port } => Ok(vec![SocketAddr::new(
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                *port,
            )]),
            ListenAddr::Ip(a) => Ok(vec![*a]),
            ListenAddr::Host { host, port } => {
                let mut addrs: Vec<SocketAddr> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|source| Error::Resolve {
                        addr: self.to_string(),
                        source,
                    })?
                    .collect();
                // Go prefers IPv4 when a name has both.
                addrs.sort_by_key(|a| !a.is_ipv4());
                addrs.dedup();
                if addrs.is_empty() {
                    return Err(Error::Resolve {
                        addr: self.to_string(),
                        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
                    });
                }
                Ok(addrs)
            }
            ListenAddr::UnixPath(_) | ListenAddr::UnixAbstract(_) => Ok(Vec::new()),
        }
    }

    /// Whether an inherited socket bound to `local` is the one this address asks for.
    ///
    /// `resolved` is [`resolve`](Self::resolve)'s answer for host names (ignored otherwise).
    /// The wildcard forms are interchangeable, as in Go grace (`[::]:8080` inherited
    /// satisfies `:8080` and `0.0.0.0:8080`); port 0 matches any port on the same IP.
    /// Whether this asks for any port (port 0): it then matches every inherited socket on
    /// its IP, so only a name can say which one is meant.
    pub(crate) fn any_port(&self) -> bool {
        match self {
            ListenAddr::AnyIp { port } | ListenAddr::Host { port, .. } => *port == 0,
            ListenAddr::Ip(a) => a.port() == 0,
            ListenAddr::UnixPath(_) | ListenAddr::UnixAbstract(_) => false,
        }
    }

    pub(crate) fn matches(&self, local: &LocalAddr, resolved: &[SocketAddr]) -> bool {
        let port_ok = |want: u16, have: u16| want == 0 || want == have;
        match (self, local) {
            (ListenAddr::AnyIp { port }, LocalAddr::Inet(a)) => {
                a.ip().is_unspecified() && port_ok(*port, a.port())
            }
            (ListenAddr::Ip(want), LocalAddr::Inet(a)) => {
                want.ip() == a.ip() && port_ok(want.port(), a.port())
            }
            (ListenAddr::Host { port, .. }, LocalAddr::Inet(a)) => {
                port_ok(*port, a.port()) && resolved.iter().any(|r| r.ip() == a.ip())
            }
            (ListenAddr::UnixPath(want), LocalAddr::UnixPath(have)) => want == have,
            (ListenAddr::UnixAbstract(want), LocalAddr::UnixAbstract(have)) => want == have,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ListenAddr {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn parses_go_forms() {
        assert_eq!(parse(":8080"), ListenAddr::AnyIp { port: 8080 });
        assert_eq!(parse("0.0.0.0:8080"), ListenAddr::AnyIp { port: 8080 });
        assert_eq!(parse("[::]:8080"), ListenAddr::AnyIp { port: 8080 });
        assert_eq!(
            parse("127.0.0.1:0"),
            ListenAddr::Ip("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(parse("[::1]:443"), ListenAddr::Ip("[::1]:443".parse().unwrap()));
        assert_eq!(
            parse("localhost:8080"),
            ListenAddr::Host {
                host: "localhost".into(),
                port: 8080
            }
        );
        assert_eq!(
            parse("unix:/run/s.sock"),
            ListenAddr::UnixPath("/run/s.sock".into())
        );
        assert_eq!(parse("unix:rel.sock"), ListenAddr::UnixPath("rel.sock".into()));
        assert_eq!(parse("unix:@grace"), ListenAddr::UnixAbstract(b"grace".to_vec()));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            ":8080",
            "127.0.0.1:0",
            "[::1]:443",
            "localhost:80",
            "unix:/a/b.sock",
            "unix:@x",
        ] {
            assert_eq!(parse(s).to_string(), s);
            assert_eq!(parse(&parse(s).to_string()), parse(s));
        }
    }

    #[test]
    fn rejects_bad_forms_with_reasons() {
        for (bad, reason) in [
            ("8080", "expected host:port"),
            ("", "expected host:port"),
            ("127.0.0.1:", "expected a port number"),
            ("127.0.0.1:99999", "expected a port number"),
            ("127.0.0.1:http", "expected a port number"),
            ("::1:8080", "needs brackets"),
            ("[::1:8080", "expected ']'"),
            ("[nope]:80", "expected an IPv6 address"),
            ("bad host:80", "expected an IP address or a host name"),
            ("unix:", "expected a socket path"),
            ("unix:@", "expected a name"),
        ] {
            match bad.parse::<ListenAddr>() {
                Err(Error::InvalidAddress { addr, reason: r }) => {
                    assert_eq!(addr, bad);
                    assert!(r.contains(reason), "{bad:?}: {r}");
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn matching_table() {
        let inet = |s: &str| LocalAddr::Inet(s.parse().unwrap());
        let v6_any = inet("[::]:8080");
        let v4_any = inet("0.0.0.0:8080");
        let lo = inet("127.0.0.1:8080");
        let lo6 = inet("[::1]:8080");
        let unix = LocalAddr::UnixPath("/run/a.sock".into());
        let resolved_localhost = ["127.0.0.1:8080".parse().unwrap()];
        // (address, inherited socket, matches?)
        let table: &[(&str, &LocalAddr, bool)] = &[
            (":8080", &v6_any, true),
            (":8080", &v4_any, true),
            ("0.0.0.0:8080", &v6_any, true),
            ("[::]:8080", &v4_any, true),
            (":8080", &lo, false),
            (":8081", &v6_any, false),
            (":0", &v6_any, true),
            ("127.0.0.1:8080", &lo, true),
            ("127.0.0.1:0", &lo, true),
            ("127.0.0.1:8080", &v4_any, false),
            ("127.0.0.1:8080", &lo6, false),
            ("[::1]:8080", &lo6, true),
            ("[::1]:0", &lo, false),
            ("localhost:8080", &lo, true),
            ("localhost:8080", &lo6, false),
            ("unix:/run/a.sock", &unix, true),
            ("unix:/run/b.sock", &unix, false),
            (":8080", &unix, false),
            ("unix:/run/a.sock", &lo, false),
        ];
        for (addr, local, want) in table {
            let got = parse(addr).matches(local, &resolved_localhost);
            assert_eq!(got, *want, "{addr} vs inherited {local}");
        }
    }

    #[test]
    fn localhost_resolves_ipv4_first() {
        let addrs = parse("localhost:8080").resolve().unwrap();
        assert_eq!(addrs[0], "127.0.0.1:8080".parse().unwrap());
        assert_eq!(parse(":80").resolve().unwrap(), vec!["[::]:80".parse().unwrap()]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn ip_addr() -> impl Strategy<Value = String> {
            prop_oneof![
                (any::<u16>()).prop_map(|p| format!(":{p}")),
                (any::<[u8; 4]>(), any::<u16>())
                    .prop_map(|(ip, p)| format!("{}:{p}", std::net::Ipv4Addr::from(ip))),
                (any::<[u8; 16]>(), any::<u16>())
                    .prop_map(|(ip, p)| format!("[{}]:{p}", std::net::Ipv6Addr::from(ip))),
                ("[a-z][a-z0-9-]{0,20}(\\.[a-z0-9-]{1,10}){0,2}", any::<u16>())
                    .prop_map(|(h, p)| format!("{h}:{p}")),
                "/[a-zA-Z0-9_./-]{1,60}".prop_map(|p| format!("unix:{p}")),
                "[a-zA-Z0-9_.-]{1,30}".prop_map(|n| format!("unix:@{n}")),
            ]
        }

        // Bounded in CI (proptest's default case count); PROPTEST_CASES=1000000 runs longer.
        proptest! {
            #[test]
            fn parse_inverts_display(s in ip_addr()) {
                let a: ListenAddr = s.parse().unwrap();
                let again: ListenAddr = a.to_string().parse().unwrap();
                prop_assert_eq!(again, a);
            }

            #[test]
            fn any_input_is_an_answer_never_a_panic(s in "\\PC{0,60}") {
                match s.parse::<ListenAddr>() {
                    Ok(a) => { let _ = a.to_string(); }
                    Err(e) => prop_assert!(e.to_string().starts_with("invalid listen address"), "{}", e),
                }
            }

            #[test]
            fn a_socket_matches_the_address_it_was_bound_at(ip in any::<[u8; 4]>(), port in 1u16..) {
                let bound = std::net::SocketAddr::from((ip, port));
                let want: ListenAddr = bound.to_string().parse().unwrap();
                prop_assert!(want.matches(&LocalAddr::Inet(bound), &[]));
            }
        }
    }
}
