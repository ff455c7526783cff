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
                // A line ends with CRLF and has no other CR: hyper refuses a bare LF, or a CR
                // not followed by LF, in the trailer section (and closes the connection),
                // where a looser reading could take the trailers to end elsewhere.
                if *total > MAX_TRAILERS || !is_crlf_line(line) {
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
    if line.len() > MAX_CHUNK_LINE || !is_crlf_line(line) {
        return None;
    }
    let line = line.strip_suffix(b"\r")?;
    // The size, then only spaces or tabs before the extensions (if any): hyper's grammar.
    let size = line.split(|&b| b == b';').next()?;
    let digits = size.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 || !size[digits..].iter().all(|&b| b == b' ' || b == b'\t') {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&size[..digits]).ok()?, 16).ok()
}

/// Whether `line` (up to its LF) ends with CR and has no CR before that.
fn is_crlf_line(line: &[u8]) -> bool {
    line.iter().position(|&b| b == b'\r') == Some(line.len().wrapping_sub(1))
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
            // A CR inside an extension, white space other than spaces and tabs after the size.
            b"3;a\rb\r\nabc\r\n",
            b"3\x0c\r\nabc\r\n",
            // Trailer lines ended by a bare LF, or a CR not followed by LF (hyper refuses
            // both; read loosely, the trailers would end a line later or earlier).
            b"0\r\nX: y\n\r\n",
            b"0\r\n\r-T: y\r\n\r\n",
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

    /// The follower against hyper itself, on generated request streams (bodies that look like
    /// requests, chunked framing in its variants, HTTP/1.0, and bytes mangled here and there):
    /// wherever the follower says the next head begins (what a hand-over would send along),
    /// hyper reading the whole stream serves exactly what one hyper reading up to that point
    /// and another reading from it serve together. A follower wrong by one byte there would
    /// let the next process read as a request what hyper read as a body (request smuggling
    /// across a restart).
    mod against_hyper {
        use super::super::Framing;
        use http_body_util::BodyExt;
        use proptest::prelude::*;
        use std::sync::{Arc, Mutex};
        use tokio::io::AsyncWriteExt;

        /// Bodies are cut from this: requests, chunk sizes and line ends inside a body.
        const NASTY: &[u8] = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n5;a\r\nPOST / HTTP/1.1\r\n";

        /// How [`served`] writes a body hyper could not read.
        const BODY_ERROR: &str = "body error:";

        fn body(n: usize, seed: u8) -> Vec<u8> {
            NASTY
                .iter()
                .cycle()
                .skip(usize::from(seed) % NASTY.len())
                .take(n)
                .copied()
                .collect()
        }

        /// Request `i` of kind `kind` with a body of `n` bytes; `style`'s bits vary the
        /// chunked framing (hex case, leading zeros, extensions, white space, trailers).
        fn request(i: usize, kind: u8, n: usize, style: u8) -> Vec<u8> {
            let b = body(n, style);
            let mut r = Vec::new();
            match kind {
                0 => r.extend_from_slice(format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()),
                1 => {
                    r.extend_from_slice(
                        format!("POST /{i} HTTP/1.1\r\nContent-Length: {n}\r\n\r\n").as_bytes(),
                    );
                    r.extend_from_slice(&b);
                }
                2 => {
                    r.extend_from_slice(
                        format!("POST /{i} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes(),
                    );
                    let step = 1 + usize::from(style >> 5);
                    for part in b.chunks(step) {
                        let mut size = if style & 1 == 0 {
                            format!("{:x}", part.len())
                        } else {
                            format!("{:X}", part.len())
                        };
                        if style & 2 != 0 {
                            size.insert(0, '0');
                        }
                        if style & 4 != 0 {
                            size.push_str(";e=\"1\"");
                        }
                        if style & 8 != 0 {
                            size.insert(size.find(';').unwrap_or(size.len()), ' ');
                        }
                        r.extend_from_slice(size.as_bytes());
                        r.extend_from_slice(b"\r\n");
                        r.extend_from_slice(part);
                        r.extend_from_slice(b"\r\n");
                    }
                    r.extend_from_slice(b"0\r\n");
                    if style & 16 != 0 {
                        r.extend_from_slice(b"X-T: GET / HTTP/1.1\r\n");
                    }
                    r.extend_from_slice(b"\r\n");
                }
                3 => {
                    r.extend_from_slice(
                        format!(
                            "POST /{i} HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: {n}\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                    r.extend_from_slice(&b);
                }
                4 => {
                    r.extend_from_slice(
                        format!("PUT /{i} HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {n}\r\n\r\n")
                            .as_bytes(),
                    );
                    r.extend_from_slice(&b);
                }
                _ => r.extend_from_slice(format!("GET /{i} HTTP/1.0\r\n\r\n").as_bytes()),
            }
            r
        }

        /// What hyper serves of `bytes` (then the end of the stream), one line per request:
        /// its head's method, target and version, its whole body and trailers.
        fn served(rt: &tokio::runtime::Runtime, bytes: &[u8]) -> Vec<String> {
            rt.block_on(async {
                let log = Arc::new(Mutex::new(Vec::new()));
                let (mut client, server) = tokio::io::duplex(1 << 16);
                client.write_all(bytes).await.unwrap();
                client.shutdown().await.unwrap();
                let seen = log.clone();
                let service =
                    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (head, body) = req.into_parts();
                            let line = match body.collect().await {
                                Ok(all) => {
                                    let trailers = all.trailers().cloned();
                                    format!(
                                        "{} {} {:?} {:?} {:?}",
                                        head.method,
                                        head.uri,
                                        head.version,
                                        all.to_bytes(),
                                        trailers
                                    )
                                }
                                Err(e) => format!(
                                    "{} {} {:?} {BODY_ERROR} {e}",
                                    head.method, head.uri, head.version
                                ),
                            };
                            seen.lock().unwrap().push(line);
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Empty::<
                                bytes::Bytes,
                            >::new(
                            )))
                        }
                    });
                let mut http1 = hyper::server::conn::http1::Builder::new();
                http1.half_close(true);
                let conn = http1.serve_connection(hyper_util::rt::TokioIo::new(server), service);
                tokio::time::timeout(std::time::Duration::from_secs(10), conn)
                    .await
                    .expect("hyper finishes a stream that has ended")
                    .ok();
                drop(client);
                log.lock().unwrap().clone()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
            #[test]
            fn where_the_follower_sees_a_head_begin_hyper_sees_it_too(
                requests in prop::collection::vec((0u8..6, 0usize..24, any::<u8>()), 1..6),
                mangled in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 0..3),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            ) {
                let mut stream = Vec::new();
                for (i, &(kind, n, style)) in requests.iter().enumerate() {
                    stream.extend_from_slice(&request(i, kind, n, style));
                }
                for (at, how) in &mangled {
                    let at = at.index(stream.len());
                    match how {
                        0 => stream[at] = b'\n',
                        1 => stream[at] = b'\r',
                        2 => stream[at] = b' ',
                        3 => stream[at] = b'0',
                        4 => stream.insert(at, b'\n'),
                        5 => stream.splice(at..at, *b"\r\n").for_each(drop),
                        6 => drop(stream.remove(at)),
                        _ => stream[at] = b';',
                    }
                }
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
                cuts.push(stream.len());
                cuts.sort_unstable();
                // Delivered in pieces; after each, where the follower says a head begins.
                let mut follower = Framing::new();
                let mut begins = std::collections::BTreeMap::new();
                let mut at = 0;
                for cut in cuts {
                    follower.delivered(&stream[at..cut]);
                    at = cut;
                    if let Some(held) = follower.partial_head(follower.heads()) {
                        begins.insert(cut - held.len(), follower.heads());
                    }
                }
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let whole = served(&rt, &stream);
                // hyper reads nothing after a body it could not read: it closes the connection.
                let whole_bodies = whole.iter().take_while(|r| !r.contains(BODY_ERROR)).count();
                prop_assert!(whole.len() <= whole_bodies + 1, "a request after a body error: {:?}", whole);
                for (begin, heads) in begins {
                    // hyper served fewer requests whole: it closed the connection before this
                    // point, so the connection is never handed from here.
                    if heads as usize > whole_bodies {
                        continue;
                    }
                    let mut split = served(&rt, &stream[..begin]);
                    split.extend(served(&rt, &stream[begin..]));
                    prop_assert_eq!(
                        &split,
                        &whole,
                        "the follower saw head {} begin at byte {} of {:?}",
                        heads + 1,
                        begin,
                        String::from_utf8_lossy(&stream)
                    );
                }
            }
        }
    }
}
