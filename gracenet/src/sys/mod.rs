//! Platform calls, in one place. Linux gets its fast paths (`close_range`, `pipe2`,
//! `SO_DOMAIN`, pidfd, abstract Unix names, the child subreaper); every other POSIX system
//! gets a portable path, and a feature a platform lacks is an [`Unsupported`](std::io::ErrorKind::Unsupported)
//! error, never a build failure.
//!
//! The portable path can be chosen on Linux too, to test it where no other system is at
//! hand: build with `RUSTFLAGS='--cfg gracenet_portable'` (`.ci/run` runs gracenet's tests
//! that way a second time).

#[cfg(all(target_os = "linux", not(gracenet_portable)))]
mod linux;
#[cfg(all(target_os = "linux", not(gracenet_portable)))]
pub(crate) use linux::*;

#[cfg(any(not(target_os = "linux"), gracenet_portable))]
mod portable;
#[cfg(any(not(target_os = "linux"), gracenet_portable))]
pub(crate) use portable::*;

mod common;
pub(crate) use common::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_uses_the_path_it_asked_for() {
        let expected = if cfg!(any(not(target_os = "linux"), gracenet_portable)) {
            "portable POSIX"
        } else {
            "linux"
        };
        assert_eq!(PLATFORM, expected);
    }

    #[test]
    fn a_pipe_is_close_on_exec_at_both_ends() {
        let (r, w) = pipe_cloexec().unwrap();
        for fd in [&r, &w] {
            let flags = nix::fcntl::fcntl(fd, nix::fcntl::F_GETFD).unwrap();
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
        }
    }

    #[test]
    fn the_fd_table_is_grown_once_at_the_start() {
        let size = || {
            std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("FDSize:")?.trim().parse::<usize>().ok())
            })
        };
        if size().is_none() {
            return; // no /proc here: nothing to look at
        }
        reserve_fd_table();
        let want = RESERVED_FDS.min(crate::env::fd_limit());
        let got = size().unwrap_or_default();
        assert!(got >= want, "FDSize {got}, expected at least {want}");
        // Nothing left open at the top of the table.
        let top = libc::c_int::try_from(want - 1).unwrap();
        // SAFETY: F_GETFD only asks about the fd number.
        assert_eq!(unsafe { libc::fcntl(top, libc::F_GETFD) }, -1);
    }

    #[test]
    fn a_listening_socket_is_told_from_a_bound_one() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsFd::as_fd(&l);
        assert!(is_listening(fd).unwrap());
        assert_eq!(socket_family(fd).unwrap(), libc::AF_INET);
        let u = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let fd = std::os::fd::AsFd::as_fd(&u);
        assert_eq!(socket_family(fd).unwrap(), libc::AF_INET6);
    }
}
