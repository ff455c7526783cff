//! The program a restart runs, resolved once at startup.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::Error;

/// The program a restart runs, fixed when the process started: `argv[0]` looked up in `PATH`
/// (or made absolute against the starting directory), so a binary replaced on disk at that
/// path is the one that runs. `/proc/self/exe` would run the old one.
#[derive(Debug, Clone)]
pub struct Executable {
    /// The path to exec.
    pub path: PathBuf,
    /// The full argument vector, `argv[0]` included, as this process received it.
    pub args: Vec<OsString>,
    /// The working directory this process started in, as the shell named it: `$PWD` when it
    /// names the same directory as `getcwd()`, so a symlink in it (`current -> releases/7`)
    /// is followed again at each restart and a symlink-swap deploy runs what it points at now.
    pub dir: PathBuf,
}

static EXECUTABLE: OnceLock<Result<Executable, String>> = OnceLock::new();

impl Executable {
    /// Resolves the program now, once per process. Called when the first registry is built,
    /// which programs do at startup, before any `chdir`.
    pub(crate) fn capture() {
        EXECUTABLE.get_or_init(resolve);
    }

    /// The program this process will restart as.
    ///
    /// # Errors
    /// [`Error::Executable`] when neither `argv[0]` nor `/proc/self/exe` names a file.
    pub fn current() -> Result<&'static Executable, Error> {
        EXECUTABLE
            .get_or_init(resolve)
            .as_ref()
            .map_err(|reason| Error::Executable {
                reason: reason.clone(),
            })
    }
}

/// What identifies the file at a program's path: its device and inode, size, and time of last
/// modification. A deploy that replaces the file or repoints a symlink on the way changes the
/// inode; one that rewrites it in place changes the modification time (and cannot while a
/// process runs it: `ETXTBSY`). Not the status-change time: a hard link made elsewhere (a
/// backup, a release directory) changes it, and the file is the same.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl Executable {
    /// The identity of the file at [`path`](Self::path) now (following symlinks); `None` when
    /// it cannot be read (then nothing started from it earlier can be trusted to be current).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn identity(&self) -> Option<FileIdentity> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&self.path).ok()?;
        Some(FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
        })
    }
}

fn resolve() -> Result<Executable, String> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the working directory: {e}"))?;
    let dir = logical_dir(cwd, std::env::var_os("PWD").as_deref());
    let argv0 = args.first().cloned().unwrap_or_default();
    let path = match lookup(&argv0, &dir, std::env::var_os("PATH").as_deref()) {
        Some(p) => p,
        None => {
            let exe = std::env::current_exe().map_err(|e| {
                format!("argv[0] {argv0:?} is not an executable file here or in PATH, and /proc/self/exe cannot be read: {e}")
            })?;
            crate::log::warn!(
                argv0 = ?argv0,
                exe = %exe.display(),
                "argv[0] does not name an executable file; restarts will run exe"
            );
            exe
        }
    };
    Ok(Executable { path, args, dir })
}

/// `$PWD` if it is an absolute path naming the same directory as `cwd` (`getcwd()`, which has
/// every symlink resolved), else `cwd`. Shells keep `$PWD` as the path the user typed.
fn logical_dir(cwd: PathBuf, pwd: Option<&OsStr>) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let Some(pwd) = pwd.map(Path::new).filter(|p| p.is_absolute()) else {
        return cwd;
    };
    let same = match (std::fs::metadata(pwd), std::fs::metadata(&cwd)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if same { pwd.to_owned() } else { cwd }
}

/// `argv0` as the shell found it: a name with a slash is a path (relative to `dir`), one
/// without is looked up in `PATH`.
fn lookup(argv0: &OsStr, dir: &Path, path_var: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exe = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if argv0.is_empty() {
        return None;
    }
    if argv0.as_bytes().contains(&b'/') {
        let p = dir.join(argv0);
        return is_exe(&p).then_some(p);
    }
    std::env::split_paths(path_var?)
        .map(|d| dir.join(d).join(argv0))
        .find(|p| is_exe(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starting_directory_is_the_logical_one_when_pwd_is_true() {
        let base = std::env::temp_dir().join(format!("gracenet-pwd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("releases/1")).unwrap();
        std::os::unix::fs::symlink("releases/1", base.join("current")).unwrap();
        let real = base.join("releases/1").canonicalize().unwrap();
        let logical = base.join("current");
        assert_eq!(logical_dir(real.clone(), Some(logical.as_os_str())), logical);
        // A stale or relative $PWD is not believed.
        assert_eq!(logical_dir(real.clone(), Some(base.as_os_str())), real);
        assert_eq!(logical_dir(real.clone(), Some(OsStr::new("current"))), real);
        assert_eq!(logical_dir(real.clone(), None), real);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn lookup_follows_the_shell() {
        let dir = Path::new("/");
        assert_eq!(
            lookup(OsStr::new("sh"), dir, Some(OsStr::new("/nonexistent:/bin"))),
            Some("/bin/sh".into())
        );
        assert_eq!(lookup(OsStr::new("/bin/sh"), dir, None), Some("/bin/sh".into()));
        assert_eq!(lookup(OsStr::new("bin/sh"), dir, None), Some("/bin/sh".into()));
        assert_eq!(
            lookup(OsStr::new("no-such-program-here"), dir, Some(OsStr::new("/bin"))),
            None
        );
        assert_eq!(
            lookup(OsStr::new("/etc/passwd"), dir, None),
            None,
            "not executable"
        );
        assert_eq!(lookup(OsStr::new(""), dir, None), None);
    }
}
