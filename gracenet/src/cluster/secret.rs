//! Secrets every worker of a cluster shares, whichever worker it is and however it started
//! (by the primary, or by its predecessor's restart): what the workers must agree on without
//! talking to each other, such as the keys a client's session ticket is sealed with (a client
//! reconnecting lands on any worker) or a certificate made at startup.
//!
//! The primary makes them once: [`RANDOM_SECRET`], 32 random bytes of its own, and any
//! the application gives it ([`ClusterBuilder::secret`](crate::ClusterBuilder::secret)).
//! They go into an anonymous memory file sealed read-only, handed to each worker as an fd
//! (`GRACE_SECRET_FD` names its number) and by each worker to its successor: never in a
//! variable's value (copied into every process the program starts, and readable in
//! `/proc/PID/environ`), nor in a file on disk. A worker reads them once, at startup
//! ([`secret`]).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

use crate::error::EnvError;
use crate::vars::GRACE_SECRET_FD;

/// The name of the 32 random bytes every cluster's primary makes when it starts, for keys the
/// workers derive alike (gracehttp's TLS session ticket keys, say).
pub const RANDOM_SECRET: &str = "gracenet.random";

/// What the file begins with: a version, so a later format is not misread.
const TAG: &[u8] = b"gracenet cluster secrets v1\n";

/// The largest file a worker reads (the secrets are keys and certificates, not data).
const MAX_LEN: usize = 1 << 20;

/// Named secrets, shown by name only.
#[derive(Clone, Default)]
pub(crate) struct Secrets(pub(crate) Vec<(String, Vec<u8>)>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Secrets {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, b)| b.as_slice())
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = TAG.to_vec();
        for (name, bytes) in &self.0 {
            for part in [name.as_bytes(), bytes] {
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part);
            }
        }
        out
    }

    /// `None` when `bytes` are not in [`Secrets::encode`]'s format.
    fn decode(bytes: &[u8]) -> Option<Secrets> {
        let mut rest = bytes.strip_prefix(TAG)?;
        let mut take = || {
            let (len, after) = rest.split_first_chunk::<4>()?;
            let (part, after) = after.split_at_checked(u32::from_be_bytes(*len) as usize)?;
            rest = after;
            Some(part.to_vec())
        };
        let mut entries = Vec::new();
        while let Some(name) = take() {
            entries.push((String::from_utf8(name).ok()?, take()?));
        }
        rest.is_empty().then_some(Secrets(entries))
    }
}

/// The primary's: `given` and [`RANDOM_SECRET`] in a new file sealed read-only.
pub(crate) fn create(given: &Secrets) -> io::Result<OwnedFd> {
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut random))?;
    let mut all = given.clone();
    all.0.retain(|(name, _)| name != RANDOM_SECRET);
    all.0.push((RANDOM_SECRET.to_owned(), random.to_vec()));
    let bytes = all.encode();
    if bytes.len() > MAX_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the workers' secrets take {} bytes: at most {MAX_LEN} fit (they are keys and certificates, not data)",
                bytes.len()
            ),
        ));
    }
    crate::sys::sealed_file("grace-cluster-secrets", &bytes)
}

/// A worker's secrets, as inherited: the file (handed on to its successor) and what it holds.
#[derive(Debug)]
pub(crate) struct Inherited {
    fd: OwnedFd,
    secrets: Secrets,
}

impl Inherited {
    /// The file, to hand on to the next process.
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Reads the secrets `GRACE_SECRET_FD`'s value (`var`) hands this process, if set.
///
/// # Errors
/// [`EnvError::Malformed`], naming the variable and what its fd should be, when the value is
/// not an fd number, the fd is not open, or it is not the cluster's secrets file: a memory
/// file sealed read-only, owned by this user and readable by it alone, of at most
/// [`MAX_LEN`] bytes, in this format. Such an fd is left open as it came (it is not known to
/// be ours to close), but close-on-exec: it goes no further than this process.
pub(crate) fn inherit(var: Option<OsString>) -> Result<Option<Inherited>, EnvError> {
    let Some(value) = var else { return Ok(None) };
    let text = value.to_string_lossy();
    let malformed = |expected: &str| EnvError::Malformed {
        var: GRACE_SECRET_FD,
        value: crate::env::shown(&text),
        expected: expected.to_owned(),
    };
    let owned = crate::env::handed_fd(GRACE_SECRET_FD, &text, "the cluster's sealed secrets file")?;
    // First of all, whatever it is: an fd the application does not know of must not reach
    // the programs it starts.
    let read = crate::socket::set_cloexec(owned.as_fd())
        .map_err(|_| malformed("an fd whose flags can be set"))
        .and_then(|()| read_sealed(owned.as_fd(), malformed));
    match read {
        Ok(secrets) => Ok(Some(Inherited { fd: owned, secrets })),
        Err(e) => {
            // Not the secrets file: left open, as it came.
            let _ = owned.into_raw_fd();
            Err(e)
        }
    }
}

/// Marks `GRACE_SECRET_FD`'s fd close-on-exec, without taking it, in a process that found
/// the variable meant for another (`LISTEN_PID` naming another pid: a copy left in the
/// environment of a process a worker started before it read its own): the copy of the
/// cluster's secrets it inherited then goes no further. Only if the fd is that file.
pub(crate) fn stop_at_this_process(var: Option<OsString>) {
    let Some(fd) = var
        .and_then(|v| v.to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| fd >= 3)
    else {
        return;
    };
    // SAFETY: the fd is only borrowed for these calls, which fail harmlessly if it is closed.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if crate::sys::is_read_only_sealed(fd).unwrap_or(false) {
        crate::log::debug!(
            fd = fd.as_raw_fd(),
            "a copy of a cluster's secrets file meant for another process: close-on-exec"
        );
        let _ = crate::socket::set_cloexec(fd);
    }
}

/// The secrets in `fd`, if it is the cluster's secrets file.
fn read_sealed(fd: BorrowedFd<'_>, malformed: impl Fn(&str) -> EnvError) -> Result<Secrets, EnvError> {
    let stat = nix::sys::stat::fstat(fd).map_err(|_| malformed("an fd that can be inspected"))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(malformed(&format!(
            "the cluster's secrets file (a memory file sealed read-only); this fd is {}",
            kind(stat.st_mode)
        )));
    }
    let sealed = crate::sys::is_read_only_sealed(fd).unwrap_or(false);
    if !sealed {
        return Err(malformed(
            "the cluster's secrets file: a memory file (memfd) sealed read-only (F_SEAL_WRITE, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_SEAL); this file is not sealed",
        ));
    }
    // The primary makes it readable by its owner only; were it not, or another user's, it
    // is not what the primary made, and nothing read there can be trusted as a secret.
    let me = nix::unistd::geteuid().as_raw();
    if stat.st_uid != me || stat.st_mode & 0o077 != 0 {
        return Err(malformed(&format!(
            "the cluster's secrets file, owned by this user ({me}) and readable by it alone; this one is owned by {} with mode {:04o}",
            stat.st_uid,
            stat.st_mode & 0o7777
        )));
    }
    let len = usize::try_from(stat.st_size)
        .ok()
        .filter(|&n| n <= MAX_LEN)
        .ok_or_else(|| {
            malformed(&format!(
                "a secrets file of at most {MAX_LEN} bytes; this one has {}",
                stat.st_size
            ))
        })?;
    let mut bytes = vec![0; len];
    // At an offset: the file's position is shared with every process holding it.
    std::fs::File::from(
        fd.try_clone_to_owned()
            .map_err(|_| malformed("an fd that can be copied"))?,
    )
    .read_exact_at(&mut bytes, 0)
    .map_err(|_| malformed("a readable secrets file"))?;
    Secrets::decode(&bytes).ok_or_else(|| malformed("a secrets file in gracenet's format (v1)"))
}

/// What a file of mode `mode` is, for an error message.
fn kind(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFSOCK => "a socket",
        libc::S_IFIFO => "a pipe",
        libc::S_IFDIR => "a directory",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFLNK => "a symbolic link",
        _ => "a file of another kind",
    }
}

/// The secret `name` this worker shares with every other worker of its cluster: the bytes the
/// primary made ([`RANDOM_SECRET`]) or was given
/// ([`ClusterBuilder::secret`](crate::ClusterBuilder::secret)), the same in every worker and
/// every worker's successors for the primary's life. `None` outside a cluster's worker, for
/// a name the primary was not given, or on a platform without sealed memory files (Linux
/// has them).
pub fn secret(name: &str) -> Option<&'static [u8]> {
    crate::startup::startup()
        .ok()?
        .secrets
        .as_ref()?
        .secrets
        .get(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A sealed memory file is Linux's (the portable path has none: see below).
    #[cfg(all(any(target_os = "linux", target_os = "android"), not(gracenet_portable)))]
    #[test]
    fn secrets_read_back_from_their_sealed_file_and_other_bytes_are_refused() {
        let given = Secrets(vec![
            ("app.cert".into(), b"PEM".to_vec()),
            ("empty".into(), Vec::new()),
        ]);
        let contents = |fd: OwnedFd| {
            let file = std::fs::File::from(fd);
            let mut bytes = vec![0; file.metadata().unwrap().len() as usize];
            file.read_exact_at(&mut bytes, 0).unwrap();
            bytes
        };
        let fd = create(&given).expect("memfd");
        assert!(crate::sys::is_read_only_sealed(fd.as_fd()).unwrap());
        let bytes = contents(fd);
        let read = Secrets::decode(&bytes).expect("decodes");
        assert_eq!(read.get("app.cert"), Some(&b"PEM"[..]));
        assert_eq!(read.get("empty"), Some(&b""[..]));
        assert_eq!(read.get(RANDOM_SECRET).map(<[u8]>::len), Some(32));
        assert_eq!(read.get("other"), None);
        assert!(
            !format!("{read:?}").contains("PEM"),
            "shown by name only: {read:?}"
        );
        for bad in [
            &b""[..],
            b"gracenet cluster secrets v2\n",
            &bytes[..bytes.len() - 1],
        ] {
            assert!(Secrets::decode(bad).is_none(), "{bad:?}");
        }
        // Each primary its own random bytes.
        let other = contents(create(&given).unwrap());
        assert_ne!(
            Secrets::decode(&other).unwrap().get(RANDOM_SECRET),
            read.get(RANDOM_SECRET)
        );
    }

    #[test]
    fn malformed_files_are_refused() {
        let entry = |name: &[u8], value: &[u8]| {
            let mut out = Vec::new();
            for part in [name, value] {
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part);
            }
            out
        };
        let good = [TAG, &entry(b"a", b"1")[..]].concat();
        assert_eq!(
            Secrets::decode(&good).and_then(|s| s.get("a").map(<[u8]>::to_vec)),
            Some(b"1".to_vec())
        );
        let huge_length = [TAG, &u32::MAX.to_be_bytes()[..], b"a"].concat();
        let not_utf8 = [TAG, &entry(b"\xff", b"1")[..]].concat();
        let name_only = [TAG, &5u32.to_be_bytes()[..], b"alone"].concat();
        let trailing = [&good[..], b"\x00\x00"].concat();
        for bad in [huge_length, not_utf8, name_only, trailing, b"garbage".to_vec()] {
            assert!(Secrets::decode(&bad).is_none(), "{bad:?}");
        }
    }

    #[cfg(all(any(target_os = "linux", target_os = "android"), not(gracenet_portable)))]
    /// What [`inherit`] makes of `fd` (given its number), and whether the fd is still open
    /// and close-on-exec afterwards; closes it.
    fn inherit_fd(fd: OwnedFd) -> (Result<Option<Inherited>, EnvError>, bool) {
        let raw = fd.into_raw_fd();
        // Not close-on-exec, as a process is handed it.
        // SAFETY: F_SETFD on an fd this test owns.
        unsafe { libc::fcntl(raw, libc::F_SETFD, 0) };
        let result = inherit(Some(raw.to_string().into()));
        // SAFETY: F_GETFD on an fd this test (or `result`) owns.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
        assert!(flags >= 0, "fd {raw} is left open");
        let cloexec = flags & libc::FD_CLOEXEC != 0;
        if result.is_err() {
            // SAFETY: left open by inherit, and owned by this test.
            drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
        }
        (result, cloexec)
    }

    #[cfg(all(any(target_os = "linux", target_os = "android"), not(gracenet_portable)))]
    fn refused(fd: OwnedFd, expected: &str) {
        let (result, cloexec) = inherit_fd(fd);
        let e = result.expect_err("refused").to_string();
        assert!(e.starts_with("GRACE_SECRET_FD="), "{e}");
        assert!(e.contains(expected), "{e}: expected {expected:?}");
        assert!(cloexec, "an fd refused goes no further than this process: {e}");
    }

    // A sealed memory file is Linux's (the portable path has none: see below).
    #[cfg(all(any(target_os = "linux", target_os = "android"), not(gracenet_portable)))]
    #[test]
    fn an_inherited_secrets_fd_that_is_not_the_sealed_file_is_refused_naming_it() {
        for (value, expected) in [
            ("abc", "an fd number of 3 or more"),
            ("1", "an fd number of 3 or more"),
            ("2147483647", "an open fd"),
        ] {
            let e = inherit(Some(value.into())).expect_err(value).to_string();
            assert!(
                e.contains(expected) && e.contains(GRACE_SECRET_FD),
                "{value}: {e}"
            );
        }
        let (read, _write) = crate::sys::pipe_cloexec().unwrap();
        refused(read, "this fd is a pipe");
        let on_disk = std::env::temp_dir().join(format!("gracenet-secret-test-{}", std::process::id()));
        std::fs::write(&on_disk, create_bytes()).unwrap();
        let file = std::fs::File::open(&on_disk).unwrap();
        std::fs::remove_file(&on_disk).unwrap();
        refused(file.into(), "not sealed");
        let unsealed =
            nix::sys::memfd::memfd_create(c"unsealed", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::write(&unsealed, &create_bytes()).unwrap();
        refused(unsealed, "not sealed");
        refused(
            crate::sys::sealed_file("garbage", b"garbage").unwrap(),
            "in gracenet's format",
        );
        let too_large = vec![0; MAX_LEN + 1];
        refused(
            crate::sys::sealed_file("large", &too_large).unwrap(),
            "at most 1048576 bytes",
        );
        // Readable by others: not what a primary makes, whoever made it.
        let open = crate::sys::sealed_file("open", &create_bytes()).unwrap();
        nix::sys::stat::fchmod(&open, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        refused(open, "with mode 0644");
        if nix::unistd::geteuid().is_root() {
            // Another user's.
            let theirs = crate::sys::sealed_file("theirs", &create_bytes()).unwrap();
            nix::unistd::fchown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            refused(theirs, "owned by 65534");
        }
        // The file a primary makes is read, and kept close-on-exec.
        let (result, cloexec) = inherit_fd(create(&Secrets::default()).unwrap());
        let inherited = result.expect("read").expect("some");
        assert_eq!(inherited.secrets.get(RANDOM_SECRET).map(<[u8]>::len), Some(32));
        assert!(cloexec, "kept from the application's children");
    }

    #[cfg(all(any(target_os = "linux", target_os = "android"), not(gracenet_portable)))]
    /// A whole secrets file's bytes.
    fn create_bytes() -> Vec<u8> {
        let file = std::fs::File::from(create(&Secrets::default()).unwrap());
        let mut bytes = vec![0; file.metadata().unwrap().len() as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        bytes
    }

    #[test]
    fn the_primary_refuses_more_secrets_than_a_worker_reads() {
        let given = Secrets(vec![("big".into(), vec![0; MAX_LEN])]);
        let e = create(&given).expect_err("too large");
        assert!(e.to_string().contains("at most 1048576"), "{e}");
    }

    // A sealed memory file is Linux's (the portable path has none: see below).
    #[cfg(all(any(target_os = "linux", target_os = "android"), not(gracenet_portable)))]
    #[test]
    fn a_copy_meant_for_another_process_is_made_close_on_exec_if_it_is_the_secrets_file() {
        let clear = |fd: &OwnedFd| {
            // SAFETY: F_SETFD on an fd this test owns.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
        };
        let cloexec = |fd: &OwnedFd| {
            // SAFETY: F_GETFD on an fd this test owns.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            flags & libc::FD_CLOEXEC != 0
        };
        let secrets = create(&Secrets::default()).unwrap();
        let (pipe, _write) = crate::sys::pipe_cloexec().unwrap();
        for fd in [&secrets, &pipe] {
            clear(fd);
            stop_at_this_process(Some(fd.as_raw_fd().to_string().into()));
        }
        assert!(cloexec(&secrets), "the secrets file goes no further");
        assert!(!cloexec(&pipe), "an fd of another kind is left as it is");
        stop_at_this_process(Some("garbage".into()));
    }

    #[test]
    #[cfg(any(gracenet_portable, not(any(target_os = "linux", target_os = "android"))))]
    fn without_sealed_memory_files_the_primary_makes_none_and_says_why() {
        let e = create(&Secrets::default()).expect_err("no sealed file on the portable path");
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
    }
}
