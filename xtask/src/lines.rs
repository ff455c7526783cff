//! The lines a child process writes, read on a thread so the child never blocks on a full
//! pipe, and waited for by content with a deadline: how the bench and the demo find
//! gracedemo's `Serving ...` and the lines of a restart in its log.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// How long [`LogLines::wait_for`] waits for a line.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Why no line containing the needle came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeverLogged {
    /// Whose lines these are, e.g. `gracedemo`.
    pub who: String,
    pub needle: String,
    /// The stream ended (the process exited) before the deadline.
    pub ended: bool,
}

impl fmt::Display for NeverLogged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = if self.ended {
            "before its output ended".to_owned()
        } else {
            format!("within {DEADLINE:?}")
        };
        write!(f, "{} never logged {:?} {why}", self.who, self.needle)
    }
}

impl std::error::Error for NeverLogged {}

impl From<NeverLogged> for String {
    fn from(e: NeverLogged) -> String {
        e.to_string()
    }
}

/// The lines of one stream of a child process.
pub struct LogLines {
    who: String,
    rx: Receiver<String>,
    /// Called with every line read while waiting (the demo shows the log).
    echo: Option<fn(&str)>,
}

impl LogLines {
    /// Starts reading `stream`, the output of `who`.
    pub fn read(who: &str, stream: impl Read + Send + 'static) -> LogLines {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LogLines {
            who: who.to_owned(),
            rx,
            echo: None,
        }
    }

    /// Passes each line read while waiting to `echo`.
    pub fn echoing(mut self, echo: fn(&str)) -> LogLines {
        self.echo = Some(echo);
        self
    }

    /// The next line containing `needle`, within [`DEADLINE`]; the lines before it are
    /// passed over.
    pub fn wait_for(&self, needle: &str) -> Result<String, NeverLogged> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.rx.recv_timeout(left).map_err(|e| NeverLogged {
                who: self.who.clone(),
                needle: needle.to_owned(),
                ended: e == RecvTimeoutError::Disconnected,
            })?;
            if let Some(echo) = self.echo {
                echo(&line);
            }
            if line.contains(needle) {
                return Ok(line);
            }
        }
    }

    /// Reads and drops the rest of the stream on a thread of its own, so the child never
    /// blocks writing to a full pipe.
    pub fn discard_the_rest(self) {
        std::thread::spawn(move || for _ in self.rx {});
    }
}

/// The port in gracedemo's `Serving 127.0.0.1:PORT, ...` line (its first server's).
pub fn serving_port(line: &str) -> Option<u16> {
    line.split_once("Serving ")?
        .1
        .split([',', ' '])
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_past_other_lines_for_the_needle() {
        let lines = LogLines::read("printer", &b"starting\nServing 127.0.0.1:4100, more\nnext\n"[..]);
        let serving = lines.wait_for("Serving ").expect("the line is there");
        assert_eq!(serving_port(&serving), Some(4100));
        assert_eq!(lines.wait_for("next"), Ok("next".into()));
    }

    #[test]
    fn an_ended_stream_is_told_apart_from_a_timeout() {
        let lines = LogLines::read("printer", &b"one line\n"[..]);
        let e = lines.wait_for("Serving ").expect_err("never printed");
        assert!(e.ended, "{e}");
        assert_eq!(
            e.to_string(),
            "printer never logged \"Serving \" before its output ended"
        );
    }

    #[test]
    fn the_port_of_a_serving_line() {
        assert_eq!(
            serving_port("INFO Serving 127.0.0.1:8080, [::1]:8081 with pid 7"),
            Some(8080)
        );
        assert_eq!(serving_port("INFO Serving 127.0.0.1:8080 with pid 7"), Some(8080));
        assert_eq!(serving_port("INFO Listening"), None);
    }
}
