//! The control socket: a Unix socket at a path the operator chooses, through which a restart
//! is asked for **and its result returned**, and the server's state read. A signal cannot say
//! whether the restart it caused worked; `systemctl reload`, a deploy script or
//! `docker exec … --reload` need to know.
//!
//! The socket is one of the generation's inherited sockets, so its path outlives every restart;
//! the serving generation answers on it. It is made mode 0600, and a peer whose uid is neither
//! the server's nor root's is refused (`SO_PEERCRED`).
//!
//! The protocol is one line each way: the client sends `restart` or `status`; the server
//! answers `ok …` or `error …` (for `status`, `ok` and then `key: value` lines) and closes.
//!
//! ```no_run
//! # fn main() -> Result<(), gracenet::Error> {
//! // In the server: gracenet::Generation::builder().control_socket("/run/app/control")
//! // In the operator's tool:
//! let answer = gracenet::control::restart("/run/app/control")?;
//! println!("{answer}"); // "generation 3 serving with pid 4242"
//! # Ok(()) }
//! ```

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::error::Error;

/// The `LISTEN_FDNAMES` name the control socket is passed on with.
pub const SOCKET_NAME: &str = "grace-control";

/// How long a client waits for an answer: longer than any ready timeout a server would use.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(600);

/// Asks the server behind the control socket at `path` to restart, and waits until the new
/// generation serves or the restart failed. Returns the server's answer ("generation 3
/// serving with pid 4242").
///
/// # Errors
/// [`Error::Control`] when the restart failed (the reason the server gave: the old generation
/// still serves) or the socket cannot be reached.
pub fn restart(path: impl AsRef<Path>) -> Result<String, Error> {
    request(path.as_ref(), "restart")
}

/// Reads the server's state: its generation, pid, phase, open connections and the older
/// generations still draining, as `key: value` lines.
///
/// # Errors
/// [`Error::Control`] when the socket cannot be reached or the server refuses.
pub fn status(path: impl AsRef<Path>) -> Result<String, Error> {
    request(path.as_ref(), "status")
}

fn request(path: &Path, command: &str) -> Result<String, Error> {
    let fail = |reason: String| Error::Control {
        path: path.to_owned(),
        reason,
    };
    let stream = UnixStream::connect(path).map_err(|e| {
        fail(format!(
            "cannot connect ({e}): is the server running with this control socket?"
        ))
    })?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(|e| fail(e.to_string()))?;
    (&stream)
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| fail(format!("cannot send {command:?}: {e}")))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .take(64 * 1024)
        .read_to_string(&mut answer)
        .map_err(|e| fail(format!("no answer to {command:?}: {e}")))?;
    let answer = answer.trim_end();
    if let Some(rest) = answer.strip_prefix("ok") {
        return Ok(rest.trim_start().to_owned());
    }
    match answer.strip_prefix("error") {
        Some(reason) => Err(fail(reason.trim_start().to_owned())),
        None if answer.is_empty() => Err(fail(format!(
            "the server closed the connection without answering {command:?}"
        ))),
        None => Err(fail(format!("unexpected answer {answer:?}"))),
    }
}

/// The server side, run by a [`Generation`](crate::Generation) built with
/// [`control_socket`](crate::GenerationBuilder::control_socket).
#[cfg(feature = "tokio")]
pub(crate) mod server {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// The longest command line a server reads.
    const MAX_COMMAND: usize = 64;
    use crate::lifecycle::{Generation, GracefulListener};
    use crate::tokio::Stream;

    /// How long a client may take to send its command.
    const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

    /// Answers on `listener` until this generation stops accepting.
    pub(crate) async fn serve(mut listener: GracefulListener, generation: Generation) {
        while let Some(stream) = listener.accept().await {
            let Stream::Unix(stream) = stream else {
                continue;
            };
            tokio::spawn(answer(stream, generation.clone()));
        }
    }

    async fn answer(mut stream: tokio::net::UnixStream, generation: Generation) {
        // The command is read before the peer is judged: a refused client still gets its
        // answer, not a reset for unread bytes.
        let command = read_command(&mut stream).await;
        let reply = match (authorised(&stream), command) {
            (Err(reason), _) | (Ok(()), Err(reason)) => format!("error {reason}\n"),
            (Ok(()), Ok(command)) => run(&command, &generation).await,
        };
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
        // Whatever else the client sent is read and dropped (briefly), for the same reason.
        let mut rest = [0u8; 1024];
        let drain = async {
            for _ in 0..64 {
                if matches!(stream.read(&mut rest).await, Ok(0) | Err(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
    }

    /// Only the server's own user and root may control it.
    fn authorised(stream: &tokio::net::UnixStream) -> Result<(), String> {
        let cred = stream
            .peer_cred()
            .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
        let ours = nix::unistd::geteuid().as_raw();
        if cred.uid() == ours || cred.uid() == 0 {
            Ok(())
        } else {
            tracing::warn!(
                "control socket: refused a client with uid {} (pid {:?})",
                cred.uid(),
                cred.pid()
            );
            Err(format!(
                "permission denied: uid {} may not control this server (uid {ours})",
                cred.uid()
            ))
        }
    }

    async fn read_command(stream: &mut tokio::net::UnixStream) -> Result<String, String> {
        let mut line = String::new();
        let mut reader = BufReader::new(stream).take(MAX_COMMAND as u64);
        match tokio::time::timeout(COMMAND_TIMEOUT, reader.read_line(&mut line)).await {
            Err(_) => Err(format!(
                "no command within {} s: expected \"restart\" or \"status\"",
                COMMAND_TIMEOUT.as_secs()
            )),
            Ok(Err(e)) => Err(format!("cannot read the command: {e}")),
            Ok(Ok(_)) => Ok(line.trim().to_owned()),
        }
    }

    async fn run(command: &str, generation: &Generation) -> String {
        match command {
            "restart" => {
                tracing::info!(
                    "control socket: restart requested (generation {})",
                    generation.number()
                );
                // The drain waits for this answer to be written.
                let _guard = generation.track();
                match generation.restart().await {
                    Ok(next) => format!(
                        "ok generation {} serving with pid {}\n",
                        next.generation, next.pid
                    ),
                    Err(e) => format!("error {e}\n"),
                }
            }
            "status" => format!("ok\n{}", generation.status()),
            other => format!(
                "error unknown command {:?}: expected \"restart\" or \"status\"\n",
                other.chars().take(MAX_COMMAND).collect::<String>()
            ),
        }
    }

    // `tokio::io::AsyncReadExt::take` for the reader above.
    use tokio::io::AsyncReadExt as _;
}
