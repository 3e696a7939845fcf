//! A private `podman system service` that the engine starts, owns and stops.
//!
//! When no libpod socket responds, the backend starts `podman system service` on a socket in a
//! private temporary directory (mode 0700) and talks to it like to any other socket. The engine
//! owns that process, and it must not outlive the engine:
//!
//! - dropping the last [`ServiceProcess`] handle stops it (SIGTERM, then SIGKILL after a grace
//!   period) and reaps it;
//! - the child is spawned with `PR_SET_PDEATHSIG` = SIGKILL, so the kernel kills it when the
//!   engine dies in a way that runs no destructor, such as `kill -9`;
//! - `--time` gives it an idle timeout as a last resort; the executor starts a new service when
//!   it finds the old one gone.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process. The
//! child is therefore spawned from a dedicated keeper thread that lives exactly as long as the
//! child: it waits for the child's exit and reaps it, and nothing else.
//!
//! A killed engine cannot remove the service's directory either. The engine holds an `flock` on
//! a lock file in it for as long as the service runs, and the kernel releases that lock when the
//! engine dies. [`sweep_stale_dirs`] removes the directories whose lock is free and whose socket
//! refuses connections, when the next executor starts.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use crate::EXECUTOR;

/// How long a stopping service gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long to wait for a killed service to be reaped before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Number of trailing bytes of the service's log quoted in error messages.
const LOG_TAIL_BYTES: u64 = 2048;

/// Name prefix of the private directories, in the system's temporary directory.
const DIR_PREFIX: &str = "agentrun-podman-";

/// Name of the socket in a private directory.
const SOCKET_NAME: &str = "podman.sock";

/// Name of the file in a private directory that the owning engine keeps locked.
const LOCK_NAME: &str = "engine.lock";

/// Name under which the lock file is created and locked, before it is renamed to [`LOCK_NAME`],
/// so that a sweeping engine never finds the lock file unlocked while its owner still runs.
const NEW_LOCK_NAME: &str = "engine.lock.new";

/// Environment variables that turn `podman` into a remote client: `CONTAINER_HOST` names a
/// service URL and `CONTAINER_CONNECTION` a named connection of `podman system connection`.
const REMOTE_CLIENT_VARS: [&str; 2] = ["CONTAINER_HOST", "CONTAINER_CONNECTION"];

/// The command line of a private service.
#[derive(Clone, Debug)]
pub(crate) struct ServiceCommand {
    /// The `podman` program.
    pub(crate) binary: PathBuf,
    /// OCI runtime passed as `--runtime`, when set.
    pub(crate) runtime: Option<String>,
    /// Idle timeout in seconds, passed as `--time` (0: none).
    pub(crate) idle_secs: u64,
}

impl ServiceCommand {
    /// Returns the command line, for logs and error messages.
    pub(crate) fn display(&self, socket: &Path) -> String {
        let mut line = self.binary.display().to_string();
        for arg in self.args(socket) {
            line.push(' ');
            line.push_str(&arg);
        }
        line
    }

    /// Builds the process to spawn in the private directory `dir`, with stdin closed and stdout
    /// and stderr still to be set.
    fn command(&self, dir: &Path, socket: &Path) -> Command {
        let mut command = Command::new(&self.binary);
        // conmon, which the service starts for each container, writes files such as `oom` (after
        // an out-of-memory kill) into its working directory, which it inherits from here.
        command
            .args(self.args(socket))
            .current_dir(dir)
            .stdin(Stdio::null());
        // With either variable set, `podman` runs as a remote client of the service it names
        // and rejects `system service` with its socket argument. The private service must be
        // a local one, whatever the engine's environment points at.
        for name in REMOTE_CLIENT_VARS {
            command.env_remove(name);
        }
        command
    }

    fn args(&self, socket: &Path) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(runtime) = &self.runtime {
            args.push("--runtime".to_owned());
            args.push(runtime.clone());
        }
        args.extend([
            "system".to_owned(),
            "service".to_owned(),
            "--time".to_owned(),
            self.idle_secs.to_string(),
            format!("unix://{}", socket.display()),
        ]);
        args
    }
}

/// A running `podman system service` child. Dropping it stops the process.
#[derive(Debug)]
pub(crate) struct ServiceProcess {
    pid: Pid,
    socket: PathBuf,
    log_path: PathBuf,
    exit: Arc<ExitState>,
    /// Idle timeout given to the service; zero when it has none.
    idle_timeout: Duration,
    /// When the engine last handed out this service's connection for a request.
    last_used: Mutex<Instant>,
    keeper: Option<thread::JoinHandle<()>>,
    /// The private directory with the socket, the log and the lock file. Declared after the
    /// process handles so that it is removed after the process is gone.
    _dir: tempfile::TempDir,
    /// The lock that marks the directory as in use, released after the directory is removed.
    _lock: Flock<File>,
}

/// Whether the child has exited, shared between the keeper thread and the owner.
///
/// The flag is set while the exited child is still a zombie, and signals are only sent while
/// the flag is clear and its lock held, so a signal can never reach a recycled process id.
#[derive(Debug, Default)]
struct ExitState {
    exited: Mutex<bool>,
    changed: Condvar,
}

impl ServiceProcess {
    /// Starts `podman system service` on a socket in a new private directory.
    ///
    /// Returns once the process runs. The caller then waits until the socket responds.
    ///
    /// # Errors
    ///
    /// The directory could not be created or the program could not be started (for example
    /// because it is not installed).
    pub(crate) fn start(command: &ServiceCommand) -> io::Result<Self> {
        let started = Instant::now();
        let dir = tempfile::Builder::new().prefix(DIR_PREFIX).tempdir()?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))?;
        let lock = lock_dir(dir.path())?;
        let socket = dir.path().join(SOCKET_NAME);
        let log_path = dir.path().join("service.log");
        let log = File::create(&log_path)?;

        let mut child_command = command.command(dir.path(), &socket);
        child_command.stdout(log.try_clone()?).stderr(log);

        let engine_pid = nix::unistd::getpid();
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe calls are allowed. It makes two system calls (prctl and getppid)
        // and builds an io::Error from a raw errno, which does not allocate. It touches no lock
        // and no memory shared with other threads.
        unsafe {
            child_command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                    .map_err(|errno| io::Error::from_raw_os_error(errno as i32))?;
                // The engine may have died between fork and prctl, in which case the death
                // signal will never come: give up instead of running unowned.
                if nix::unistd::getppid() != engine_pid {
                    return Err(io::Error::from_raw_os_error(
                        nix::errno::Errno::ESRCH as i32,
                    ));
                }
                Ok(())
            });
        }

        let exit = Arc::new(ExitState::default());
        let (spawned_tx, spawned_rx) = mpsc::channel();
        let keeper_exit = Arc::clone(&exit);
        let keeper = thread::Builder::new()
            .name("podman-service".to_owned())
            .spawn(move || keep(child_command, &keeper_exit, &spawned_tx))?;

        let pid = match spawned_rx.recv() {
            Ok(Ok(pid)) => pid,
            Ok(Err(error)) => {
                let _ = keeper.join();
                return Err(error);
            }
            Err(_) => {
                let _ = keeper.join();
                return Err(io::Error::other("the service keeper thread ended early"));
            }
        };

        info!(
            executor = EXECUTOR,
            pid = pid.as_raw(),
            socket = %socket.display(),
            command = %command.display(&socket),
            "started a private podman service"
        );
        Ok(Self {
            pid,
            socket,
            log_path,
            exit,
            idle_timeout: Duration::from_secs(command.idle_secs),
            // Podman's idle timer starts with the service, which is after this point.
            last_used: Mutex::new(started),
            keeper: Some(keeper),
            _dir: dir,
            _lock: lock,
        })
    }

    /// Returns the process id of the service.
    pub(crate) fn pid(&self) -> u32 {
        // Process ids are positive, so the absolute value is the id itself.
        self.pid.as_raw().unsigned_abs()
    }

    /// Returns the path of the service's socket.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// Returns true once the process has exited, for example after its idle timeout.
    pub(crate) fn has_exited(&self) -> bool {
        *self
            .exit
            .exited
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that a request is about to use the service.
    pub(crate) fn mark_used(&self) {
        *self
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// Returns true when the service has gone without requests from this engine for half its
    /// idle timeout or longer, so that the timeout may have fired.
    ///
    /// Podman's idle timer restarts when the last open connection closes, which is always after
    /// the engine handed that connection out. Half the timeout is left as a margin for a machine
    /// that stalls between this check and the request.
    pub(crate) fn may_have_idled_out(&self) -> bool {
        if self.idle_timeout.is_zero() {
            return false;
        }
        let last_used = *self
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last_used.elapsed() >= self.idle_timeout / 2
    }

    /// Returns the end of the service's log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        read_tail(&self.log_path, LOG_TAIL_BYTES).unwrap_or_default()
    }

    /// Sends `signal` unless the process has already exited.
    fn signal(&self, signal: Signal) {
        let exited = self
            .exit
            .exited
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !*exited {
            if let Err(error) = kill(self.pid, signal) {
                debug!(pid = self.pid.as_raw(), %error, "signalling the podman service failed");
            }
        }
    }

    /// Waits up to `limit` for the process to exit and returns whether it did.
    fn wait_exited(&self, limit: Duration) -> bool {
        let exited = self
            .exit
            .exited
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (exited, _) = self
            .exit
            .changed
            .wait_timeout_while(exited, limit, |exited| !*exited)
            .unwrap_or_else(PoisonError::into_inner);
        *exited
    }
}

impl Drop for ServiceProcess {
    /// Stops the service and reaps it. Blocks the calling thread for as long as that takes:
    /// a few milliseconds normally, at most [`STOP_GRACE`] plus [`KILL_WAIT`].
    fn drop(&mut self) {
        let pid = self.pid.as_raw();
        if !self.has_exited() {
            self.signal(Signal::SIGTERM);
            if !self.wait_exited(STOP_GRACE) {
                warn!(
                    executor = EXECUTOR,
                    pid, "the podman service ignored SIGTERM; killing it"
                );
                self.signal(Signal::SIGKILL);
                self.wait_exited(KILL_WAIT);
            }
        }
        if self.has_exited() {
            if let Some(keeper) = self.keeper.take() {
                let _ = keeper.join();
            }
            info!(
                executor = EXECUTOR,
                pid, "stopped the private podman service"
            );
        } else {
            warn!(
                executor = EXECUTOR,
                pid, "the podman service did not exit after SIGKILL"
            );
        }
    }
}

/// Sends SIGKILL to every descendant of process `root` (not to `root` itself) and returns how
/// many were signalled. Runs twice, for children forked while the first pass ran.
pub(crate) fn kill_descendants(root: u32) -> usize {
    let mut killed = std::collections::HashSet::new();
    for _ in 0..2 {
        for pid in descendants(root) {
            // Process ids fit in an i32 on Linux (pid_max is at most 2^22).
            if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                killed.insert(pid);
            }
        }
    }
    killed.len()
}

/// Returns the pids of every descendant of `root`, read from `/proc/PID/stat`.
fn descendants(root: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the command name, which is in parentheses
        // and may contain spaces.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|field| field.parse::<u32>().ok());
        if let Some(parent) = parent {
            children.entry(parent).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            found.push(child);
            queue.push(child);
        }
    }
    found
}

/// Creates the lock file of a new private directory and locks it for this process.
fn lock_dir(dir: &Path) -> io::Result<Flock<File>> {
    let new_path = dir.join(NEW_LOCK_NAME);
    let file = File::create(&new_path)?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, errno)| io::Error::from_raw_os_error(errno as i32))?;
    fs::rename(&new_path, dir.join(LOCK_NAME))?;
    Ok(lock)
}

/// Removes the private directories in `parent` that an engine left behind when it was killed,
/// and returns their paths.
///
/// A directory is removed only when it belongs to this user, its lock file exists and no
/// process holds its lock, and nothing listens on its socket. Directories of running engines,
/// and directories still being set up (which have no lock file yet), are kept. Failures are
/// logged and skip that directory.
pub(crate) fn sweep_stale_dirs(parent: &Path) -> Vec<PathBuf> {
    let entries = match fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(error) => {
            debug!(parent = %parent.display(), %error, "listing private podman service directories failed");
            return Vec::new();
        }
    };
    let uid = nix::unistd::geteuid().as_raw();
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let is_ours = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(DIR_PREFIX));
        if !is_ours {
            continue;
        }
        let path = entry.path();
        // `symlink_metadata` does not follow links, so a link named like a directory is skipped.
        let owned_dir = fs::symlink_metadata(&path)
            .is_ok_and(|metadata| metadata.is_dir() && metadata.uid() == uid);
        if owned_dir && remove_if_stale(&path) {
            removed.push(path);
        }
    }
    removed
}

/// Removes one private directory when its engine and its service are gone. Returns true when
/// it removed the directory.
fn remove_if_stale(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join(LOCK_NAME)) else {
        return false;
    };
    // Held until the directory is gone, so that two sweeping engines do not race.
    let Ok(_lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
        return false;
    };
    if UnixStream::connect(dir.join(SOCKET_NAME)).is_ok() {
        debug!(dir = %dir.display(), "a service still listens in an unlocked directory; kept");
        return false;
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => {
            info!(
                executor = EXECUTOR,
                dir = %dir.display(),
                "removed the directory of a private podman service whose engine was killed"
            );
            true
        }
        Err(error) => {
            warn!(executor = EXECUTOR, dir = %dir.display(), %error, "removing a stale private podman service directory failed");
            false
        }
    }
}

/// Body of the keeper thread: spawns the child, reports its pid, and waits for its exit.
fn keep(mut command: Command, exit: &ExitState, spawned: &mpsc::Sender<io::Result<Pid>>) {
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let _ = spawned.send(Err(error));
            return;
        }
    };
    // Linux process ids are at most 2^22 (the kernel's PID_MAX_LIMIT), so they fit in an i32.
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("a Linux pid fits in i32"));
    let _ = spawned.send(Ok(pid));

    // Wait without reaping, so that the pid stays reserved until the flag is set.
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(error) => {
                warn!(pid = pid.as_raw(), %error, "waiting for the podman service failed");
                break;
            }
            Ok(_) => break,
        }
    }
    *exit.exited.lock().unwrap_or_else(PoisonError::into_inner) = true;
    exit.changed.notify_all();

    match child.wait() {
        Ok(status) => debug!(pid = pid.as_raw(), %status, "the podman service exited"),
        Err(error) => warn!(pid = pid.as_raw(), %error, "reaping the podman service failed"),
    }
}

/// Reads at most the last `max_bytes` of a file as text.
fn read_tail(path: &Path, max_bytes: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(max_bytes)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_puts_runtime_before_subcommand() {
        let command = ServiceCommand {
            binary: PathBuf::from("podman"),
            runtime: Some("runc".to_owned()),
            idle_secs: 30,
        };
        assert_eq!(
            command.display(Path::new("/tmp/x/podman.sock")),
            "podman --runtime runc system service --time 30 unix:///tmp/x/podman.sock"
        );
    }

    #[test]
    fn command_line_without_runtime() {
        let command = ServiceCommand {
            binary: PathBuf::from("/usr/bin/podman"),
            runtime: None,
            idle_secs: 0,
        };
        assert_eq!(
            command.display(Path::new("/s")),
            "/usr/bin/podman system service --time 0 unix:///s"
        );
    }

    /// The service must not inherit the variables that make `podman` a remote client.
    #[test]
    fn command_removes_remote_client_vars() {
        let command = ServiceCommand {
            binary: PathBuf::from("podman"),
            runtime: None,
            idle_secs: 5,
        };
        let process = command.command(Path::new("/d"), Path::new("/d/s"));
        let removed: Vec<_> = process
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        assert_eq!(removed, ["CONTAINER_CONNECTION", "CONTAINER_HOST"]);
    }

    /// The service and the conmon processes it starts run in the private directory, not in the
    /// engine's working directory.
    #[test]
    fn command_runs_in_private_dir() {
        let command = ServiceCommand {
            binary: PathBuf::from("podman"),
            runtime: None,
            idle_secs: 5,
        };
        let process = command.command(Path::new("/d"), Path::new("/d/s"));
        assert_eq!(process.get_current_dir(), Some(Path::new("/d")));
    }

    #[test]
    fn read_tail_keeps_end_of_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log");
        fs::write(&path, "0123456789").expect("write");
        assert_eq!(read_tail(&path, 4).expect("read"), "6789");
        assert_eq!(read_tail(&path, 100).expect("read"), "0123456789");
    }

    /// Creates a private directory in `parent` as a killed engine leaves it: an unlocked lock
    /// file and a socket file that nothing listens on.
    fn stale_dir(parent: &Path, name: &str) -> PathBuf {
        let dir = parent.join(name);
        fs::create_dir(&dir).expect("create dir");
        fs::write(dir.join(LOCK_NAME), "").expect("write lock file");
        let listener =
            std::os::unix::net::UnixListener::bind(dir.join(SOCKET_NAME)).expect("bind socket");
        drop(listener);
        fs::write(dir.join("service.log"), "log").expect("write log");
        dir
    }

    #[test]
    fn sweep_removes_unlocked_dir_without_listener() {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = stale_dir(parent.path(), "agentrun-podman-stale");

        let removed = sweep_stale_dirs(parent.path());

        assert_eq!(removed, vec![dir.clone()]);
        assert!(!dir.exists());
    }

    /// The lock of a running engine keeps its directory, even without a socket.
    #[test]
    fn sweep_keeps_locked_dir() {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = parent.path().join("agentrun-podman-live");
        fs::create_dir(&dir).expect("create dir");
        let _lock = lock_dir(&dir).expect("lock");

        assert_eq!(sweep_stale_dirs(parent.path()), Vec::<PathBuf>::new());
        assert!(dir.join(LOCK_NAME).exists());
        assert!(!dir.join(NEW_LOCK_NAME).exists());
    }

    /// A directory without a lock file may be one that an engine is still setting up.
    #[test]
    fn sweep_keeps_dir_without_lock_file() {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = stale_dir(parent.path(), "agentrun-podman-new");
        fs::remove_file(dir.join(LOCK_NAME)).expect("remove lock file");

        assert_eq!(sweep_stale_dirs(parent.path()), Vec::<PathBuf>::new());
        assert!(dir.exists());
    }

    /// A socket that accepts connections means its service still runs.
    #[test]
    fn sweep_keeps_dir_with_listener() {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = stale_dir(parent.path(), "agentrun-podman-listening");
        fs::remove_file(dir.join(SOCKET_NAME)).expect("remove socket");
        let _listener =
            std::os::unix::net::UnixListener::bind(dir.join(SOCKET_NAME)).expect("bind socket");

        assert_eq!(sweep_stale_dirs(parent.path()), Vec::<PathBuf>::new());
        assert!(dir.exists());
    }

    /// Only directories named like ours are candidates, and a link is never followed.
    #[test]
    fn sweep_skips_other_names_and_links() {
        let parent = tempfile::tempdir().expect("temp dir");
        let other = stale_dir(parent.path(), "other-podman-stale");
        let target = tempfile::tempdir().expect("temp dir");
        let linked = stale_dir(target.path(), "agentrun-podman-target");
        std::os::unix::fs::symlink(&linked, parent.path().join("agentrun-podman-link"))
            .expect("symlink");

        assert_eq!(sweep_stale_dirs(parent.path()), Vec::<PathBuf>::new());
        assert!(other.exists());
        assert!(linked.exists());
    }

    #[test]
    fn start_with_missing_binary_fails() {
        let command = ServiceCommand {
            binary: PathBuf::from("/nonexistent/podman"),
            runtime: None,
            idle_secs: 5,
        };
        let error = ServiceProcess::start(&command).expect_err("spawn must fail");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
