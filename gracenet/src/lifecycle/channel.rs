//! The channel between a generation and the next one it starts: a Unix socket pair, the
//! next process's end passed as `GRACE_READY_FD`. This module owns its layout and the state
//! section; the sections' other owners are named below.
//!
//! # On the channel, in order
//! - new to old: the readiness byte, or a refusal (`X` and why), and for a standby first the
//!   wake's acknowledgement ([`crate::readiness`], read by the driver).
//! - old to new, first: the state section, an 8-byte little-endian length then that many
//!   bytes ([`GenerationBuilder::hand_state`](super::GenerationBuilder::hand_state)), or the
//!   length [`NO_STATE`] alone, or when the application's provider failed, the length
//!   [`STATE_FAILED`] then why ([`write_state_failed`]). Always written, so whatever follows
//!   can be found: a next generation that reads no state skips it ([`skip_state`]).
//! - then, both ways: the live connections handed over and their answers, framed by
//!   [`handover`](super::handover) (a module of its own: frames with an fd attached, and the
//!   acknowledgement that makes a connection change owner).
//! - old to new, last, once the old generation's drain has ended (so after every connection
//!   frame): the final state, [`FINAL`] then a state section as above ([`write_final`]).
//!   Only a generation that hands state sends it; a gracenet older than it sends none, and
//!   one that reads connections only stops at it (it is the last frame).
//!
//! A parent of an older gracenet passes a pipe instead of a socket: readiness only, neither
//! state nor connections ([`open`] says `None`).

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// The length that means "no state" on the channel to the next generation.
pub(super) const NO_STATE: u64 = u64::MAX;

/// The length that means "the state could not be made", followed by why: a 2-byte
/// little-endian length and that many bytes of UTF-8.
pub(super) const STATE_FAILED: u64 = u64::MAX - 1;

/// The longest reason [`write_state_failed`] sends.
const MAX_REASON: usize = 1024;

/// The final state's tag, followed by a state section (9 bytes with its length, the size of
/// an older connection frame's header).
pub(super) const FINAL: u8 = b'F';

/// The channel to the parent generation as a tokio stream; `None` when it is a pipe (from
/// an older gracenet), which carries neither state nor connections.
pub(super) fn open(fd: OwnedFd) -> io::Result<Option<UnixStream>> {
    let is_socket = nix::sys::stat::fstat(&fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK);
    if !is_socket {
        return Ok(None);
    }
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    UnixStream::from_std(stream).map(Some)
}

/// Writes the state section: `state`'s length and bytes, or [`NO_STATE`] for `None`.
pub(super) async fn write_state(out: &mut (impl AsyncWrite + Unpin), state: Option<&[u8]>) -> io::Result<()> {
    match state {
        None => out.write_all(&NO_STATE.to_le_bytes()).await,
        Some(bytes) => {
            out.write_all(&(bytes.len() as u64).to_le_bytes()).await?;
            out.write_all(bytes).await
        }
    }
}

/// Writes the state section of a state that could not be made: [`STATE_FAILED`] and why, so
/// the next generation's `inherited_state` fails at once saying so (it would otherwise wait
/// for the state until its ready timeout).
pub(super) async fn write_state_failed(out: &mut (impl AsyncWrite + Unpin), why: &str) -> io::Result<()> {
    let mut end = why.len().min(MAX_REASON);
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    let why = &why.as_bytes()[..end];
    out.write_all(&STATE_FAILED.to_le_bytes()).await?;
    out.write_all(&(why.len() as u16).to_le_bytes()).await?;
    out.write_all(why).await
}

/// Reads the reason [`write_state_failed`] wrote after [`STATE_FAILED`].
async fn read_reason(input: &mut (impl AsyncRead + Unpin)) -> io::Result<String> {
    let mut len = [0u8; 2];
    input.read_exact(&mut len).await?;
    let len = usize::from(u16::from_le_bytes(len));
    if len > MAX_REASON {
        return Err(io::Error::other(format!(
            "a {len}-byte reason, over {MAX_REASON}"
        )));
    }
    let mut why = vec![0u8; len];
    input.read_exact(&mut why).await?;
    Ok(String::from_utf8_lossy(&why).into_owned())
}

/// Writes the final state: [`FINAL`], then `state` as a state section.
pub(super) async fn write_final(out: &mut (impl AsyncWrite + Unpin), state: &[u8]) -> io::Result<()> {
    out.write_all(&[FINAL]).await?;
    write_state(out, Some(state)).await
}

/// Reads the state section: `None` for [`NO_STATE`], or when the channel ends before the
/// length begins (a parent that hands nothing).
///
/// # Errors
/// When the section is longer than `max`, cut short, or the channel fails.
pub(super) async fn read_state(
    input: &mut (impl AsyncRead + Unpin),
    max: u64,
) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match input.read(&mut len[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cut short")),
            n => got += n,
        }
    }
    let len = u64::from_le_bytes(len);
    if len == NO_STATE {
        return Ok(None);
    }
    if len == STATE_FAILED {
        let why = read_reason(input).await?;
        return Err(io::Error::other(format!(
            "the previous generation could not make its state: {why}"
        )));
    }
    if len > max {
        return Err(io::Error::other(format!(
            "{len} bytes offered, more than the limit of {max} (GenerationBuilder::max_state)"
        )));
    }
    let mut bytes = vec![0u8; len as usize];
    input.read_exact(&mut bytes).await?;
    Ok(Some(bytes))
}

/// Skips the state section, for a next generation that does not read it: `false` when the
/// channel ended within it (nothing follows).
///
/// # Errors
/// When the channel fails.
pub(super) async fn skip_state(input: &mut (impl AsyncRead + Unpin)) -> io::Result<bool> {
    let mut len = [0u8; 8];
    if input.read_exact(&mut len).await.is_err() {
        return Ok(false);
    }
    let len = u64::from_le_bytes(len);
    if len == NO_STATE {
        return Ok(true);
    }
    if len == STATE_FAILED {
        return Ok(read_reason(input).await.is_ok());
    }
    let skipped = tokio::io::copy(&mut input.take(len), &mut tokio::io::sink()).await?;
    Ok(skipped == len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_state_that_could_not_be_made_is_an_error_that_says_why_and_skips_cleanly() {
        let (mut a, mut b) = UnixStream::pair().expect("a socket pair");
        write_state_failed(&mut a, "the state provider panicked")
            .await
            .expect("write");
        a.write_all(b"after").await.expect("write");
        let e = read_state(&mut b, 1024).await.expect_err("a failed state");
        assert!(e.to_string().contains("the state provider panicked"), "{e}");
        let mut after = [0u8; 5];
        b.read_exact(&mut after).await.expect("what follows");
        assert_eq!(&after, b"after");
        // Skipped by a generation that reads no state, to what follows.
        write_state_failed(&mut a, &"é".repeat(MAX_REASON))
            .await
            .expect("write a long reason");
        a.write_all(b"next").await.expect("write");
        assert!(skip_state(&mut b).await.expect("skip"));
        let mut next = [0u8; 4];
        b.read_exact(&mut next).await.expect("what follows");
        assert_eq!(&next, b"next");
    }

    #[tokio::test]
    async fn a_state_section_reads_back_and_skips_to_what_follows() {
        for state in [None, Some(&b""[..]), Some(&b"v1:counter=7"[..])] {
            let (mut a, mut b) = UnixStream::pair().expect("a socket pair");
            write_state(&mut a, state).await.expect("write");
            a.write_all(b"H").await.expect("what follows");
            assert_eq!(read_state(&mut b, 1024).await.expect("read").as_deref(), state);
            let mut next = [0u8; 1];
            b.read_exact(&mut next).await.expect("what follows");
            assert_eq!(&next, b"H");

            let (mut a, mut b) = UnixStream::pair().expect("a socket pair");
            write_state(&mut a, state).await.expect("write");
            a.write_all(b"H").await.expect("what follows");
            assert!(skip_state(&mut b).await.expect("skip"));
            b.read_exact(&mut next).await.expect("what follows");
            assert_eq!(&next, b"H");
        }
    }

    #[tokio::test]
    async fn a_state_over_the_limit_is_refused() {
        let (mut a, mut b) = UnixStream::pair().expect("a socket pair");
        write_state(&mut a, Some(b"0123456789")).await.expect("write");
        let e = read_state(&mut b, 4).await.expect_err("over the limit");
        assert!(e.to_string().contains("more than the limit of 4"), "{e}");
    }
}
