//! The `LISTEN_FDS` protocol's environment: parsing it, and taking it out of the process
//! environment once so no other process inherits it by accident.

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::EnvError;

pub(crate) use crate::vars::{FIRST_INHERITED_FD, LISTEN_FDNAMES, LISTEN_FDS, LISTEN_PID};

/// What the three variables say, once checked against each other and against this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListenEnv {
    /// `LISTEN_FDS` is not set: nothing was inherited.
    Absent,
    /// `LISTEN_PID` names another process: the fds are not ours to use.
    OtherProcess { listen_pid: u32 },
    /// `count` fds from fd 3 are ours.
    Fds {
        count: usize,
        /// One entry per fd; `None` where no name (or an empty one) was given.
        names: Vec<Option<String>>,
        /// `LISTEN_PID` as set (equal to our pid), or `None` when it was not set (Go grace).
        listen_pid: Option<u32>,
    },
}

/// Parses the three variables' values.
///
/// `our_pid` is this process's pid; `fd_limit` is the highest fd count this process may hold
/// (its `RLIMIT_NOFILE`), which bounds a believable `LISTEN_FDS`.
pub(crate) fn parse(
    fds: Option<&str>,
    pid: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
    fd_limit: usize,
) -> Result<ListenEnv, EnvError> {
    let Some(fds) = fds else {
        return Ok(ListenEnv::Absent);
    };
    let max_count = fd_limit.saturating_sub(FIRST_INHERITED_FD as usize);
    let count = fds
        .parse::<usize>()
        .ok()
        .filter(|&n| n <= max_count)
        .ok_or_else(|| EnvError::Malformed {
            var: LISTEN_FDS,
            value: shown(fds),
            expected: format!(
                "a decimal count of inherited fds from 0 to {max_count} (fds 3 and up, below this process's fd limit of {fd_limit})"
            ),
        })?;
    let listen_pid = match pid {
        None => None,
        Some(value) => {
            Some(
                value
                    .parse::<u32>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| EnvError::Malformed {
                        var: LISTEN_PID,
                        value: shown(value),
                        expected: "a process id (a positive decimal number)".to_owned(),
                    })?,
            )
        }
    };
    if let Some(listen_pid) = listen_pid
        && listen_pid != our_pid
    {
        return Ok(ListenEnv::OtherProcess { listen_pid });
    }
    let names = match names {
        None => vec![None; count],
        Some(value) => {
            let split: Vec<&str> = if value.is_empty() && count == 0 {
                Vec::new()
            } else {
                value.split(':').collect()
            };
            if split.len() != count {
                return Err(EnvError::NameCount {
                    value: shown(value),
                    names: split.len(),
                    fds: count,
                });
            }
            split
                .into_iter()
                .map(|n| (!n.is_empty()).then(|| n.to_owned()))
                .collect()
        }
    };
    Ok(ListenEnv::Fds {
        count,
        names,
        listen_pid,
    })
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Reads the three variables from the process environment and removes them, the first time
/// it is called in a process; later calls return [`ListenEnv::Absent`], so the fds are only
/// ever adopted once.
pub(crate) fn take_from_process() -> Result<ListenEnv, EnvError> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(ListenEnv::Absent);
    }
    let fds = take_var(LISTEN_FDS);
    let pid = take_var(LISTEN_PID);
    let names = take_var(LISTEN_FDNAMES);
    let lossy = |v: &Option<OsString>| v.as_ref().map(|s| s.to_string_lossy().into_owned());
    parse(
        lossy(&fds).as_deref(),
        lossy(&pid).as_deref(),
        lossy(&names).as_deref(),
        std::process::id(),
        fd_limit(),
    )
}

/// Reads `var`, and removes it from the process environment (so no subprocess inherits it)
/// if that is sound now: only while this is the process's one thread. Changing the
/// environment while another thread may read it (`getenv` in a time zone lookup, a log
/// filter) is undefined behaviour; a variable left in place is harmless: a process gracenet
/// starts is given none of this process's copies (each of [`crate::vars::OWNED`] is written
/// for it), and one the program starts itself finds a `LISTEN_PID` that is not its own, so
/// gracenet there ignores the copy.
pub(crate) fn take_var(var: &str) -> Option<OsString> {
    let value = std::env::var_os(var);
    if value.is_some() && crate::sys::single_threaded() {
        // SAFETY: this process has one thread (checked just above, and this thread is running
        // this code, so no thread can be created meanwhile): nothing reads the environment
        // concurrently.
        unsafe { std::env::remove_var(var) };
    }
    value
}

/// A value as an error message shows it: at most 64 characters, then how long it was.
/// The fd a gracenet variable (`var`, already taken out of the environment) hands to this
/// process by number (`text`), owned from now on: an fd number of 3 or more that is open.
/// `what` says what the fd should be, for the error.
pub(crate) fn handed_fd(var: &'static str, text: &str, what: &str) -> Result<std::os::fd::OwnedFd, EnvError> {
    let malformed = |expected: &str| EnvError::Malformed {
        var,
        value: shown(text),
        expected: expected.to_owned(),
    };
    let fd: std::os::fd::RawFd = text
        .parse()
        .ok()
        .filter(|&fd| fd >= 3)
        .ok_or_else(|| malformed("an fd number of 3 or more"))?;
    // SAFETY: the variable hands the fd to this process, and take_var removed it, so this
    // runs once per process and nothing else owns or closes the fd.
    unsafe { crate::socket::own_if_open(fd) }.map_err(|_| malformed(&format!("an open fd: {what}")))
}

pub(crate) fn shown(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        return value.to_owned();
    }
    let head: String = value.chars().take(MAX).collect();
    format!("{head}… ({} bytes)", value.len())
}

/// This process's soft limit on open fds.
pub(crate) fn fd_limit() -> usize {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _hard)| usize::try_from(soft).unwrap_or(usize::MAX))
        .unwrap_or(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: u32 = 4242;
    const LIMIT: usize = 1024;

    fn p(fds: Option<&str>, pid: Option<&str>, names: Option<&str>) -> Result<ListenEnv, EnvError> {
        parse(fds, pid, names, PID, LIMIT)
    }

    #[test]
    fn absent_when_listen_fds_unset() {
        assert_eq!(p(None, None, None), Ok(ListenEnv::Absent));
        assert_eq!(p(None, Some("1"), Some("a")), Ok(ListenEnv::Absent));
    }

    #[test]
    fn go_grace_style_without_pid_or_names() {
        assert_eq!(
            p(Some("2"), None, None),
            Ok(ListenEnv::Fds {
                count: 2,
                names: vec![None, None],
                listen_pid: None
            })
        );
    }

    #[test]
    fn systemd_style_with_our_pid_and_names() {
        assert_eq!(
            p(Some("3"), Some("4242"), Some("web::admin")),
            Ok(ListenEnv::Fds {
                count: 3,
                names: vec![Some("web".into()), None, Some("admin".into())],
                listen_pid: Some(PID)
            })
        );
        assert_eq!(
            p(Some("0"), Some("4242"), Some("")),
            Ok(ListenEnv::Fds {
                count: 0,
                names: vec![],
                listen_pid: Some(PID)
            })
        );
    }

    #[test]
    fn another_process_pid_leaves_fds_alone() {
        assert_eq!(
            p(Some("2"), Some("1"), Some("x")),
            Ok(ListenEnv::OtherProcess { listen_pid: 1 })
        );
    }

    #[test]
    fn malformed_listen_fds_is_named() {
        for bad in ["abc", "-1", "99999", "", " 1", "1.0", "0x3", "1022"] {
            match p(Some(bad), None, None) {
                Err(EnvError::Malformed { var, value, .. }) => {
                    assert_eq!(var, LISTEN_FDS);
                    assert_eq!(value, bad);
                }
                other => panic!("LISTEN_FDS={bad:?} gave {other:?}"),
            }
        }
        let msg = p(Some("abc"), None, None).unwrap_err().to_string();
        assert!(
            msg.starts_with("LISTEN_FDS=\"abc\" is malformed: expected a decimal count"),
            "{msg}"
        );
        // The largest count that fits under the fd limit is accepted.
        assert!(p(Some("1021"), None, None).is_ok());
    }

    #[test]
    fn malformed_listen_pid_is_named() {
        for bad in ["abc", "-5", "0", "", "12x"] {
            match p(Some("1"), Some(bad), None) {
                Err(EnvError::Malformed { var, value, .. }) => {
                    assert_eq!(var, LISTEN_PID);
                    assert_eq!(value, bad);
                }
                other => panic!("LISTEN_PID={bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn name_count_mismatch_is_an_error() {
        assert_eq!(
            p(Some("2"), None, Some("one")),
            Err(EnvError::NameCount {
                value: "one".into(),
                names: 1,
                fds: 2
            })
        );
        assert_eq!(
            p(Some("1"), None, Some("a:b")),
            Err(EnvError::NameCount {
                value: "a:b".into(),
                names: 2,
                fds: 1
            })
        );
        let msg = p(Some("1"), None, Some("a:b")).unwrap_err().to_string();
        assert!(
            msg.contains("LISTEN_FDNAMES=\"a:b\" has 2 name(s) but LISTEN_FDS=1"),
            "{msg}"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        // Bounded in CI (proptest's default case count); PROPTEST_CASES=1000000 runs longer.
        proptest! {
            #[test]
            fn any_values_are_an_answer_never_a_panic(
                fds in proptest::option::of("\\PC{0,12}"),
                pid in proptest::option::of("\\PC{0,12}"),
                names in proptest::option::of("\\PC{0,40}"),
            ) {
                match parse(fds.as_deref(), pid.as_deref(), names.as_deref(), PID, LIMIT) {
                    Ok(ListenEnv::Fds { count, names, .. }) => prop_assert_eq!(names.len(), count),
                    Ok(_) => {}
                    Err(e) => {
                        let msg = e.to_string();
                        prop_assert!(msg.starts_with("LISTEN_"), "{}", msg);
                    }
                }
            }

            #[test]
            fn well_formed_values_are_read_back(count in 0usize..50, names in proptest::collection::vec("[a-z]{0,8}", 50)) {
                let names = &names[..count];
                let joined = names.join(":");
                let got = parse(Some(&count.to_string()), Some(&PID.to_string()), Some(&joined), PID, LIMIT).unwrap();
                let want: Vec<Option<String>> = names.iter().map(|n| (!n.is_empty()).then(|| n.clone())).collect();
                prop_assert_eq!(got, ListenEnv::Fds { count, names: want, listen_pid: Some(PID) });
            }
        }
    }
}
