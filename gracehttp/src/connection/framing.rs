//! Where HTTP/1.1 requests begin and end in the bytes a cleartext connection has given hyper,
//! so that a connection can be handed to the next process between requests: when hyper waits
//! for more bytes with no request in flight, the bytes it holds unparsed are exactly the
//! beginning of the next request's head ([`Framing::partial_head`]), which go along with the
//! connection. hyper does not give its read buffer back from a connection that supports
//! upgrades, so the bytes are followed here instead: each request head is found (httparse,
//! as hyper parses it) and its body skipped by its `Content-Length`, or chunk by chunk when it
//! is chunked. What cannot be followed that cheaply (a head longer than hyper takes, a request
//! that ends the connection, other transfer codings, a head or chunk framing hyper would
//! reject) stops the following for good: that connection stays with this process and is
//! drained as before.

/// The longest request head followed; a longer one stops the following. hyper's own limit
/// (its default read buffer, 8 KiB + 100 × 4 KiB): a longer head it refuses (431).
const MAX_HEAD: usize = 8 * 1024 + 100 * 4 * 1024;
/// The most header fields parsed in one head (hyper's default limit is 100).
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (extensions included) or trailer line followed, and the most
/// trailer bytes: longer stops the following.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// Where the bytes given to hyper stand.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Between requests, or in a head: these bytes of the next head have come (none, between
    /// requests).
    Head(Vec<u8>),
    /// In a request body: this many bytes of it are still to come.
    Body(u64),
    /// In a chunked request body.
    Chunked(Chunk),
    /// Lost: the bytes can no longer be followed.
    Lost,
}

/// Where a chunked body stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunk {
    /// In a chunk-size line: its bytes so far.
    Size(Vec<u8>),
    /// In a chunk's data: this many bytes still to come.
    Data(u64),
    /// After a chunk's data: this many bytes of its CRLF seen.
    DataEnd(u8),
    /// In the trailer section: the current line's bytes so far, and every trailer byte.
    Trailer(Vec<u8>, usize),
}

/// Follows request boundaries in a connection's bytes (see the module's docs).
#[derive(Debug)]
pub(crate) struct Framing {
    state: State,
    /// Request heads seen complete.
    heads: u64,
    /// When the bytes of the head in progress began to come (read only for a head that
    /// spans reads, so the common whole head costs no clock read): a connection handed over
    /// in the middle of one takes its header read deadline along.
    head_since: Option<std::time::Instant>,
}

/// What a complete head says of what follows it.
enum After {
    /// A body of this many bytes (0: none), then the next request.
    Body(u64),
    /// A chunked body, then the next request.
    Chunked,
    /// Nothing that can be followed.
    Lost,
}

impl Framing {
    /// At a connection's start (or a handed connection's, before the bytes handed with it).
    pub(crate) fn new() -> Framing {
        Framing {
            state: State::Head(Vec::new()),
            heads: 0,
            head_since: None,
        }
    }

    /// Notes `bytes`, just given to hyper.
    pub(crate) fn delivered(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Lost => return,
                State::Body(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::Chunked(chunk) => match chunked(chunk, bytes) {
                    Some((used, done)) => {
                        bytes = &bytes[used..];
                        if done {
                            self.state = State::Head(Vec::new());
                        }
                    }
                    None => {
                        self.state = State::Lost;
                        return;
                    }
                },
                State::Head(partial) => {
                    // The common case, a head that came whole in one read: parsed where it is.
                    let parsed = if partial.is_empty() {
                        parse(bytes)
                    } else {
                        let had = partial.len();
                        partial.extend_from_slice(bytes);
                        parse(partial).map(|p| p.map(|(used, after)| (used - had, after)))
                    };
                    match parsed {
                        Ok(Some((used, after))) => {
                            self.heads += 1;
                            self.head_since = None;
                            bytes = &bytes[used..];
                            self.state = match after {
                                After::Body(0) => State::Head(Vec::new()),
                                After::Body(n) => State::Body(n),
                                After::Chunked => State::Chunked(Chunk::Size(Vec::new())),
                                After::Lost => State::Lost,
                            };
                        }
                        Ok(None) => {
                            if partial.is_empty() {
                                partial.extend_from_slice(bytes);
                                self.head_since = Some(std::time::Instant::now());
                            }
                            if partial.len() > MAX_HEAD {
                                self.state = State::Lost;
                            }
                            return;
                        }
                        Err(()) => {
                            self.state = State::Lost;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Request heads seen complete so far.
    pub(crate) fn heads(&self) -> u64 {
        self.heads
    }

    /// Whether the bytes can no longer be followed.
    pub(crate) fn lost(&self) -> bool {
        self.state == State::Lost
    }

    /// The bytes hyper holds unparsed, when they are only the beginning of the next request's
    /// head (perhaps none) and `started` requests (those hyper has begun serving) are every
    /// head seen: `None` in a body, with a complete head hyper has not begun yet, or lost.
    pub(crate) fn partial_head(&self, started: u64) -> Option<&[u8]> {
        match &self.state {
            State::Head(partial) if started == self.heads => Some(partial),
            _ => None,
        }
    }

    /// When the head in progress began to come, if one is (see [`Framing::partial_head`]).
    pub(crate) fn head_since(&self) -> Option<std::time::Instant> {
        match &self.state {
            State::Head(partial) if !partial.is_empty() => self.head_since,
            _ => None,
        }
    }
}

/// Parses a head at the start of `bytes`: `Ok(Some((length, after)))` once it is complete
/// (leading empty lines included, which hyper skips too), `Ok(None)` while it is not, `Err`
/// when it is not a head hyper would take.
fn parse(bytes: &[u8]) -> Result<Option<(usize, After)>, ()> {
    // Left uninitialised, as hyper does: zeroing room for every header costs more than
    // parsing a small head.
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let used = match req.parse_with_uninit_headers(bytes, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    if req.version != Some(1)
        && !req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("connection") && has_token(h.value, b"keep-alive"))
    {
        // HTTP/1.0 ends the connection after the response unless the client asks it to stay
        // (`Connection: keep-alive`, as ApacheBench's `-k` sends): not followed. One that asks
        // is followed as HTTP/1.1 is.
        return Ok(Some((used, After::Lost)));
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (n, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                // Unreadable or conflicting: hyper answers 400 and closes.
                _ => return Ok(Some((used, After::Lost))),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked alone is followed; other codings, or chunked named twice, are not.
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Ok(Some((used, After::Lost)));
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") && has_token(h.value, b"close") {
            // A connection that ends after this request.
            return Ok(Some((used, After::Lost)));
        }
    }
    if chunked && (length.is_some() || req.version != Some(1)) {
        // Both framings at once (a request smuggler's), or chunked in HTTP/1.0: hyper refuses
        // or reads it its own way; not followed.
        return Ok(Some((used, After::Lost)));
    }
    if req.method == Some("CONNECT") || req.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade")) {
        // If the service accepts, the bytes after the head are another protocol's.
        return Ok(Some((used, After::Lost)));
    }
    if chunked {
        return Ok(Some((used, After::Chunked)));
    }
    Ok(Some((used, After::Body(length.unwrap_or(0)))))
}

/// Follows a chunked body through `bytes`: how many bytes it used, and whether the body ended
/// there; `None` when the framing is not what hyper would take (then it is not followed).
fn chunked(chunk: &mut Chunk, bytes: &[u8]) -> Option<(usize, bool)> {
    let mut used = 0;
    while used < bytes.len() {
        let rest = &bytes[used..];
        match chunk {
            Chunk::Size(line) => {
                let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                    line.extend_from_slice(rest);
                    return (line.len() <= MAX_CHUNK_LINE).then_some((bytes.len(), false));
                };
                line.extend_from_slice(&rest[..end]);
                used += end + 1;
                let size = chunk_size(line)?;
                *chunk = if size == 0 {
                    Chunk::Trailer(Vec::new(), 0)
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                let n = (*left).min(rest.len() as u64);
                *left -= n;
                used += n as usize;
                if *left == 0 {
                    *chunk = Chunk::DataEnd(0);
                }
            }
            Chunk::DataEnd(seen) => {
                let want = if *seen == 0 { b'\r' } else { b'\n' };
                if rest[0] != want {
                    return None;
                }
                used += 1;
                *seen += 1;
                if *seen == 2 {
                    *chunk = Chunk::Size(Vec::new());
                }
            }
            Chunk::Trailer(line, total) => {
                let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                    line.extend_from_slice(rest);
                    *total += rest.len();
                    return (*total <= MAX_TRAILERS).then_some((bytes.len(), false));
                };
                line.extend_from_slice(&rest[..end]);
                *total += end + 1;
                used += end + 1;
                if *total > MAX_TRAILERS {
                    return None;
                }
                if line.as_slice() == b"\r" {
                    // The empty line: the body ends here.
                    return Some((used, true));
                }
                line.clear();
            }
        }
    }
    Some((used, false))
}

/// A chunk-size line's size (hexadecimal, before any `;` extension), `None` when hyper would
/// not take it. `line` is the line up to its LF.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r")?;
    if line.len() > MAX_CHUNK_LINE {
        return None;
    }
    let digits = line.split(|&b| b == b';').next()?.trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// Whether the comma-separated header `value` lists `token` (ASCII case ignored).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::Framing;

    const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn whole_requests_leave_nothing_pending() {
        let mut f = Framing::new();
        assert_eq!(f.partial_head(0), Some(&b""[..]), "a fresh connection");
        f.delivered(GET);
        assert_eq!(f.partial_head(0), None, "a head hyper has not begun");
        assert_eq!(f.partial_head(1), Some(&b""[..]));
        f.delivered(b"POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel");
        assert_eq!(f.partial_head(2), None, "in a body");
        f.delivered(b"lo");
        assert_eq!(f.partial_head(2), Some(&b""[..]));
    }

    #[test]
    fn a_pipelined_beginning_is_what_hyper_holds() {
        let mut f = Framing::new();
        let mut bytes = GET.to_vec();
        bytes.extend_from_slice(b"GET /b HTTP/1.1\r\nHo");
        f.delivered(&bytes);
        assert_eq!(f.partial_head(1), Some(&b"GET /b HTTP/1.1\r\nHo"[..]));
        f.delivered(b"st: x\r\n");
        assert_eq!(f.partial_head(1), Some(&b"GET /b HTTP/1.1\r\nHost: x\r\n"[..]));
        f.delivered(b"\r\n");
        assert_eq!(f.partial_head(2), Some(&b""[..]));
        // Two whole requests in one read, then a third's beginning.
        let mut f = Framing::new();
        let mut bytes = [GET, GET].concat();
        bytes.extend_from_slice(b"\r\nGET");
        f.delivered(&bytes);
        assert_eq!(f.partial_head(2), Some(&b"\r\nGET"[..]));
    }

    #[test]
    fn a_head_in_progress_keeps_the_time_its_first_bytes_came() {
        let mut f = Framing::new();
        f.delivered(GET);
        assert_eq!(f.head_since(), None, "a whole head");
        let before = std::time::Instant::now();
        f.delivered(b"GET /b HTTP/1.1\r\nHo");
        let since = f.head_since().expect("a head in progress");
        assert!(since >= before);
        f.delivered(b"st: x\r\n");
        assert_eq!(
            f.head_since(),
            Some(since),
            "its first bytes' time, not the latest"
        );
        f.delivered(b"\r\n");
        assert_eq!(f.head_since(), None, "complete");
    }

    #[test]
    fn a_body_split_anywhere_is_skipped_by_its_length() {
        let all = b"PUT /c HTTP/1.1\r\ncontent-length: 10\r\n\r\n0123456789GET /d HTTP/1.1\r\n\r\n";
        for cut in 0..all.len() {
            let mut f = Framing::new();
            f.delivered(&all[..cut]);
            f.delivered(&all[cut..]);
            assert_eq!(f.partial_head(2), Some(&b""[..]), "cut at {cut}");
        }
    }

    #[test]
    fn an_http10_request_that_asks_to_stay_is_followed_like_http11() {
        let mut f = Framing::new();
        f.delivered(b"GET /a HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        f.delivered(
            b"POST /b HTTP/1.0\r\nconnection: keep-alive\r\ncontent-length: 3\r\n\r\nabcGET /c HTTP/1.0\r\n",
        );
        assert!(!f.lost());
        assert_eq!(f.partial_head(2), Some(&b"GET /c HTTP/1.0\r\n"[..]));
    }

    #[test]
    fn a_chunked_body_split_anywhere_is_followed_to_the_next_request() {
        let all: &[u8] = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n\
            GET /d HTTP/1.1\r\n";
        for cut in 0..all.len() {
            for cut2 in [cut, (cut + 7).min(all.len())] {
                let mut f = Framing::new();
                f.delivered(&all[..cut]);
                f.delivered(&all[cut..cut2]);
                f.delivered(&all[cut2..]);
                assert!(!f.lost(), "cut at {cut}/{cut2}");
                assert_eq!(
                    f.partial_head(1),
                    Some(&b"GET /d HTTP/1.1\r\n"[..]),
                    "cut at {cut}/{cut2}"
                );
            }
        }
        // No trailers, and the next request at once.
        let mut f = Framing::new();
        f.delivered(b"POST / HTTP/1.1\r\ntransfer-encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        assert_eq!(f.partial_head(1), Some(&b""[..]));
        // In the middle of it: no head to hand.
        let mut f = Framing::new();
        f.delivered(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nab");
        assert_eq!(f.partial_head(1), None);
        assert!(!f.lost());
    }

    #[test]
    fn a_chunk_framing_hyper_would_refuse_is_lost() {
        for body in [
            &b"zz\r\n"[..],
            b"3\r\nabcX\r\n",
            b"\r\n",
            b"ffffffffffffffff1\r\n",
            b"3\nabc\r\n",
        ] {
            let mut f = Framing::new();
            f.delivered(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
            f.delivered(body);
            assert!(f.lost(), "{}", String::from_utf8_lossy(body));
        }
        let mut f = Framing::new();
        f.delivered(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        f.delivered(&vec![b'1'; super::MAX_CHUNK_LINE + 1]);
        assert!(f.lost(), "a chunk-size line too long to follow");
    }

    #[test]
    fn what_cannot_be_followed_is_lost_for_good() {
        for head in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"\x00\x01 not http\r\n\r\n",
        ] {
            let mut f = Framing::new();
            f.delivered(head);
            assert!(f.lost(), "{}", String::from_utf8_lossy(head));
            f.delivered(GET);
            assert_eq!(f.partial_head(1), None);
        }
        let mut f = Framing::new();
        f.delivered(&vec![b'a'; super::MAX_HEAD + 1]);
        assert!(f.lost(), "a head too long to follow");
    }
}
