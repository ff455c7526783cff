//! The optional PID file: always naming the process that is serving.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Writes our pid to `path` atomically (a temp file in the same directory, then `rename`), so
/// a reader never sees a half-written or empty file.
pub(crate) fn write(path: &Path) -> Result<(), Error> {
    let pid = std::process::id();
    let io = |what: &str, source| Error::Io {
        what: format!("cannot {what} the PID file {}", path.display()),
        source,
    };
    let tmp = temp_path(path, pid);
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            writeln!(f, "{pid}")?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("write", e));
    }
    Ok(())
}

/// Removes `path` if it still names us: a successor that took it over keeps it.
pub(crate) fn remove_if_ours(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .map(|s| s.trim() == std::process::id().to_string())
        .unwrap_or(false);
    if ours {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), "cannot remove the PID file: {e}");
        }
    }
}

fn temp_path(path: &Path, pid: u32) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{pid}.tmp"));
    path.with_file_name(name)
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
        write(&path).unwrap();
        remove_if_ours(&path);
        assert!(!path.exists());
        let err = write(&dir.join("missing-dir/app.pid")).unwrap_err();
        assert!(err.to_string().contains("cannot write the PID file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
