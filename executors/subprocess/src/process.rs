//! Process-group handling: killing everything an agent started, and noticing the agent's exit
//! without reaping it.
//!
//! The agent leads its own process group, so its id is also the group's id. While the leader is
//! not reaped (it may be a zombie), the kernel cannot give that id to another process or group,
//! so `killpg` on it can only reach the agent's own processes. The backend therefore waits for
//! the exit without reaping ([`ExitWatch`]), kills the group, and only then reaps the leader.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Poll interval of [`ExitWatch`] on kernels without `pidfd_open` (before Linux 5.3).
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The agent's process group. Dropping it while armed kills the group, so a job future that is
/// dropped halfway leaves no process behind.
#[derive(Debug)]
pub(crate) struct ProcessGroup {
    id: Pid,
    armed: bool,
}

impl ProcessGroup {
    /// Wraps the group led by the just-spawned process `leader`.
    pub(crate) fn new(leader: u32) -> Self {
        Self {
            // Process ids fit in an i32 on Linux (pid_max is at most 2^22).
            id: Pid::from_raw(leader as i32),
            armed: true,
        }
    }

    /// Sends `SIGKILL` to every process in the group. A group that is already empty is fine.
    pub(crate) fn kill(&self) {
        if !self.armed {
            return;
        }
        match killpg(self.id, Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(errno) => {
                tracing::warn!(pgid = self.id.as_raw(), %errno, "killing the agent's process group failed")
            }
        }
    }

    /// Marks the leader as reaped: from now on the id may belong to another process, so the
    /// group must not be signalled again.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for a child to exit without reaping it.
#[derive(Debug)]
pub(crate) struct ExitWatch {
    pid: i32,
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl ExitWatch {
    /// Watches the child `pid`, through a pidfd where the kernel has them.
    ///
    /// # Errors
    ///
    /// Failure to open or register the pidfd, other than the kernel lacking the call.
    pub(crate) fn new(pid: u32) -> io::Result<Self> {
        let pid = pid as i32;
        // SAFETY: `pidfd_open` takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
        if fd < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ENOSYS) {
                return Ok(Self { pid, pidfd: None });
            }
            return Err(error);
        }
        // SAFETY: `fd` is a descriptor that `pidfd_open` just returned and nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the `OwnedFd` keeps the descriptor open, and always returns that same
        // descriptor, until the `AsyncFd` that owns it is dropped.
        let pidfd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }?;
        Ok(Self {
            pid,
            pidfd: Some(pidfd),
        })
    }

    /// Resolves once the child has exited. The child stays unreaped.
    pub(crate) async fn exited(&self) {
        if let Some(pidfd) = &self.pidfd {
            // A pidfd becomes readable when its process exits, and stays so.
            match pidfd.readable().await {
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%error, "waiting on the agent's pidfd failed; polling instead");
                }
            }
        }
        while !self.has_exited() {
            tokio::time::sleep(EXIT_POLL_INTERVAL).await;
        }
    }

    /// Checks with `waitid(WNOWAIT)` whether the child has exited, leaving it unreaped.
    fn has_exited(&self) -> bool {
        // SAFETY: an all-zero siginfo_t is a valid value for `waitid` to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is valid and writable; WNOHANG keeps the call from blocking and
        // WNOWAIT leaves the child waitable, so tokio still reaps it.
        let result = unsafe {
            libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if result != 0 {
            // ECHILD: nothing left to wait for.
            return true;
        }
        // SAFETY: `waitid` filled `info` (or left it zeroed when nothing has exited).
        unsafe { info.si_pid() != 0 }
    }
}
