//! The optional PID file: always naming the process that is serving.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Writes our pid to `path` atomically (a temp file in the same directory, then `rename`), so
/// a reader never sees a half-written or empty file. The temp file has an unpredictable name
/// and is created with `O_EXCL | O_NOFOLLOW` (mode 0644): a file or symlink planted in the
/// directory is never followed, truncated or written through. Not `fsync`ed: a PID file means
/// nothing after the machine itself went down, `rename` alone keeps readers from a partial
/// file, and the sync sat on the restart's path (the next process writes the file before it
/// tells the previous one it is ready): under load it waited ~6 ms on the disk's journal here.
///
/// Returns the file it replaced, open: the caller closes it off that path, so the old file's
/// blocks are freed there, not inside the `rename` — on a file system mounted with `discard`,
/// freeing them waits for the disk (milliseconds, measured here, on the path above).
pub(crate) fn write(path: &Path) -> Result<Option<std::fs::File>, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let pid = std::process::id();
    let io = |what: &str, source| Error::Io {
        what: format!("cannot {what} the PID file {}", path.display()),
        source,
    };
    // Read-only, never following a symlink; gone or unreadable is fine (nothing to defer).
    let replaced = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()
        .filter(|f| f.metadata().is_ok_and(|m| m.is_file()));
    let mut last = None;
    // A name taken (by a planted file, say) is skipped, a few times at most.
    for attempt in 0..8u32 {
        let tmp = temp_path(path, pid, attempt);
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp);
        let mut file = match created {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(io("write", e)),
        };
        let result = writeln!(file, "{pid}")
            .and_then(|()| file.metadata())
            .and_then(|meta| std::fs::rename(&tmp, path).map(|()| meta));
        match result {
            Ok(meta) => {
                use std::os::unix::fs::MetadataExt;
                *written() = Some((path.to_owned(), (meta.dev(), meta.ino())));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io("write", e));
            }
        }
        return Ok(replaced);
    }
    Err(io(
        "write",
        last.unwrap_or_else(|| std::io::Error::other("no free temporary name")),
    ))
}

/// The PID file this process wrote last, and its file's device and inode.
fn written() -> std::sync::MutexGuard<'static, Option<(PathBuf, (u64, u64))>> {
    static WRITTEN: std::sync::Mutex<Option<(PathBuf, (u64, u64))>> = std::sync::Mutex::new(None);
    WRITTEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes `path` if it is still the file this process wrote (the same device and inode) and
/// still names us: a successor that took it over keeps it, and so does another server that
/// wrote its own file at the same path since (even one whose pid is ours again).
pub(crate) fn remove_if_ours(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let same_file = match written().as_ref() {
        Some((p, id)) if p == path => std::fs::symlink_metadata(path)
            .map(|m| (m.dev(), m.ino()) == *id)
            .unwrap_or(false),
        // Never written by this process: not ours.
        _ => false,
    };
    let ours = same_file
        && std::fs::read_to_string(path)
            .map(|s| s.trim() == std::process::id().to_string())
            .unwrap_or(false);
    if !ours {
        if path.exists() {
            crate::log::info!(path = %path.display(), "leaving the PID file: it is not the one this process wrote, or names another process");
        }
        return;
    }
    if let Err(e) = std::fs::remove_file(path) {
        crate::log::warn!(path = %path.display(), error = %e, "cannot remove the PID file");
    }
}

/// After this process killed its next generation (`dead`) before it took over: that one may
/// have written the PID file already (it writes it as it becomes ready, just before telling
/// us). A PID file naming it names a dead process: when this process keeps serving
/// (`stopping` false) the file is written again to name it; when it is stopping, the file is
/// removed. A file naming anyone else is left alone.
pub(crate) fn reclaim(path: &Path, dead: u32, stopping: bool) {
    let names_dead = std::fs::read_to_string(path).is_ok_and(|s| s.trim() == dead.to_string());
    if !names_dead {
        return;
    }
    if stopping {
        match std::fs::remove_file(path) {
            Ok(()) => {
                crate::log::info!(path = %path.display(), pid = dead, "removed the PID file the killed next generation had written")
            }
            Err(e) => crate::log::warn!(path = %path.display(), error = %e, "cannot remove the PID file"),
        }
    } else {
        match write(path) {
            Ok(_) => crate::log::info!(
                path = %path.display(),
                pid = dead,
                "the PID file named the failed next generation: it names this process again"
            ),
            Err(e) => crate::log::warn!(error = %e, "cannot write the PID file again"),
        }
    }
}

/// `.<file>.<pid>.<random>.tmp` beside `path`: nobody can predict the name to plant a
/// symlink at it.
fn temp_path(path: &Path, pid: u32, attempt: u32) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(
        ".{pid}.{:016x}.tmp",
        unpredictable() ^ u64::from(attempt)
    ));
    path.with_file_name(name)
}

/// 64 bits nobody outside this process can guess: std's per-process random hash keys, mixed
/// with the clock.
fn unpredictable() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_atomically_and_removed_only_when_ours() {
        let dir = std::env::temp_dir().join(format!("gracenet-pidfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.pid");
        write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left behind"
        );
        std::fs::write(&path, "1\n").unwrap(); // a successor took it over
        remove_if_ours(&path);
        assert!(path.exists());
        // Another server's file at the same path, naming our pid (a reused pid): a file of
        // its own (another inode), so it stays.
        write(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, format!("{}\n", std::process::id())).unwrap();
        remove_if_ours(&path);
        assert!(path.exists(), "another process's file is kept");
        write(&path).unwrap();
        remove_if_ours(&path);
        assert!(!path.exists());
        // A symlink planted where a predictable temp name would be, and a link at the PID
        // file's own name: neither target is written.
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(format!("app.pid.{}.tmp", std::process::id()))).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(format!(".app.pid.{}.tmp", std::process::id())))
            .unwrap();
        write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        remove_if_ours(&path);
        // A killed next generation's file: named again while serving, removed when stopping;
        // anyone else's is left.
        std::fs::write(&path, "4242\n").unwrap();
        reclaim(&path, 4241, false);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4242\n");
        reclaim(&path, 4242, false);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        std::fs::write(&path, "4242\n").unwrap();
        reclaim(&path, 4242, true);
        assert!(!path.exists());
        let err = write(&dir.join("missing-dir/app.pid")).unwrap_err();
        assert!(err.to_string().contains("cannot write the PID file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
