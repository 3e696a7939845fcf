//! Records of running jobs in a state folder, so that an engine that was killed with SIGKILL
//! can stop the agents it left running once it starts again.
//!
//! Each running job has a file `<job id>.job`. Its first line contains the agent's process id
//! (which is also its process group id) and the process's start time from `/proc/PID/stat`, in
//! clock ticks since boot. Its second line contains the job's private `HOME` folder. A pid can be
//! reused by an unrelated process once the agent is gone, so a recorded group is killed only
//! while a process with that pid and that start time exists. The `HOME` folder is removed with
//! the record.
//!
//! Engine processes that come and go, such as command-line runs, share one folder: each keeps
//! its records in a subfolder named `<pid>-<start time>` after itself (see [`owner_dir`]), and
//! [`stop_dead_owners`] stops the jobs of subfolders whose process is gone.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// File name suffix of a job record.
const RECORD_SUFFIX: &str = ".job";
/// Name prefix of the `HOME` folders that a record may name; any other folder is left alone.
pub(crate) const HOME_PREFIX: &str = "agentrun-home-";

/// The record of a running job. Dropping it removes the file.
#[derive(Debug)]
pub(crate) struct JobRecord {
    path: PathBuf,
}

impl Drop for JobRecord {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_file(&self.path) {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), %error, "removing a job record failed");
            }
        }
    }
}

/// Records that job `job_id` runs the process group led by `pid` with the `HOME` folder
/// `home`, in `dir` (created when missing).
///
/// # Errors
///
/// Failure to create the folder, read the process's start time or write the file.
pub(crate) fn record(dir: &Path, job_id: u64, pid: u32, home: &Path) -> io::Result<JobRecord> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let start = start_time(pid)?;
    let path = record_path(dir, job_id);
    // Written under a temporary name and renamed, so that a reader never sees half a record.
    let partial = dir.join(format!("{job_id}{RECORD_SUFFIX}.partial"));
    let mut text = format!("{pid} {start}\n").into_bytes();
    text.extend_from_slice(home.as_os_str().as_bytes());
    text.push(b'\n');
    fs::write(&partial, text)?;
    fs::rename(&partial, &path)?;
    Ok(JobRecord { path })
}

/// Stops the process group that job `job_id` left running, if its record exists and its
/// leader still runs with the recorded start time, and removes its `HOME` folder and the
/// record. Returns true when a group was killed.
///
/// # Errors
///
/// Failure to read or remove the record, other than its absence.
pub(crate) fn stop_recorded(dir: &Path, job_id: u64) -> io::Result<bool> {
    let path = record_path(dir, job_id);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    let record = parse_record(&text);
    let killed = match record {
        Some((pid, start, _)) if start_time(pid).is_ok_and(|now| now == start) => {
            // Process ids fit in an i32 on Linux (pid_max is at most 2^22).
            match killpg(Pid::from_raw(pid as i32), Signal::SIGKILL) {
                Ok(()) => true,
                Err(nix::errno::Errno::ESRCH) => false,
                Err(errno) => return Err(io::Error::from(errno)),
            }
        }
        // Gone, reused by another process, or a record that cannot be read: nothing to kill.
        _ => false,
    };
    if let Some((_, _, Some(home))) = record {
        remove_home(&home);
    }
    fs::remove_file(&path)?;
    Ok(killed)
}

/// Removes a job's `HOME` folder named by a record, when it is a folder that this backend
/// creates (its name starts with [`HOME_PREFIX`]). Failures are logged: the agent's user may
/// have left files that the engine cannot remove.
fn remove_home(home: &Path) {
    let ours = home
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with(HOME_PREFIX));
    // `symlink_metadata` does not follow a link, so a link in place of the folder is skipped.
    let is_dir = fs::symlink_metadata(home).is_ok_and(|metadata| metadata.is_dir());
    if !(ours && is_dir) {
        return;
    }
    if let Err(error) = fs::remove_dir_all(home) {
        tracing::warn!(home = %home.display(), %error, "removing the HOME folder of a job that an earlier engine process left failed");
    }
}

/// Returns the name of this process's subfolder in a folder that several engine processes
/// share: `<pid>-<start time>`.
///
/// # Errors
///
/// Failure to read this process's start time.
pub(crate) fn owner_dir(shared: &Path) -> io::Result<PathBuf> {
    let pid = std::process::id();
    Ok(shared.join(format!("{pid}-{}", start_time(pid)?)))
}

/// Stops the jobs recorded in every subfolder of `shared` whose engine process is gone (no
/// process with its pid and start time exists), removes their `HOME` folders and then the
/// subfolder. Returns the ids of the jobs whose agents were killed. A missing folder has none.
///
/// # Errors
///
/// Failure to read `shared`. Failures inside one subfolder are logged and skip it.
pub(crate) fn stop_dead_owners(shared: &Path) -> io::Result<Vec<u64>> {
    let entries = match fs::read_dir(shared) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut killed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let owner = entry.file_name().to_str().and_then(|name| {
            let (pid, start) = name.split_once('-')?;
            Some((pid.parse::<u32>().ok()?, start.parse::<u64>().ok()?))
        });
        let Some((pid, start)) = owner else {
            continue;
        };
        if start_time(pid).is_ok_and(|now| now == start) {
            continue;
        }
        let dir = entry.path();
        let stopped = recorded_jobs(&dir).and_then(|jobs| {
            for job_id in jobs {
                if stop_recorded(&dir, job_id)? {
                    killed.push(job_id);
                }
            }
            // Records written halfway by the killed process are left over as `.partial` files.
            fs::remove_dir_all(&dir)
        });
        if let Err(error) = stopped {
            tracing::warn!(dir = %dir.display(), %error, "stopping the jobs of an engine process that is gone failed");
        }
    }
    Ok(killed)
}

/// Returns the job ids of every record in `dir`, in no particular order. A missing folder has
/// none.
///
/// # Errors
///
/// Failure to read the folder, other than its absence.
pub(crate) fn recorded_jobs(dir: &Path) -> io::Result<Vec<u64>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut jobs = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let job_id = name
            .to_str()
            .and_then(|name| name.strip_suffix(RECORD_SUFFIX))
            .and_then(|id| id.parse::<u64>().ok());
        if let Some(job_id) = job_id {
            jobs.push(job_id);
        }
    }
    Ok(jobs)
}

fn record_path(dir: &Path, job_id: u64) -> PathBuf {
    dir.join(format!("{job_id}{RECORD_SUFFIX}"))
}

/// Reads `PID START` from a record's first line and the `HOME` folder from its second line,
/// when there is one.
fn parse_record(text: &[u8]) -> Option<(u32, u64, Option<PathBuf>)> {
    let mut lines = text.split(|byte| *byte == b'\n');
    let first = std::str::from_utf8(lines.next()?).ok()?;
    let mut words = first.split_whitespace();
    let pid = words.next()?.parse().ok()?;
    let start = words.next()?.parse().ok()?;
    let home = lines
        .next()
        .filter(|line| !line.is_empty())
        .map(|line| PathBuf::from(std::ffi::OsStr::from_bytes(line)));
    Some((pid, start, home))
}

/// Returns a process's start time in clock ticks since boot: field 22 of `/proc/PID/stat`.
///
/// # Errors
///
/// The process does not exist, or its stat line cannot be read.
pub(crate) fn start_time(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces and parentheses, so
    // the fields are counted after its last `)`. Field 3 is the first one there.
    let after_name = stat
        .rfind(')')
        .map(|index| &stat[index + 1..])
        .ok_or_else(|| io::Error::other(format!("unexpected /proc/{pid}/stat: {stat:?}")))?;
    after_name
        .split_whitespace()
        .nth(22 - 3)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected /proc/{pid}/stat: {stat:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_own_process_is_stable() {
        let first = start_time(std::process::id()).expect("own stat");
        let second = start_time(std::process::id()).expect("own stat");
        assert_eq!(first, second);
        assert!(first > 0);
    }

    #[test]
    fn start_time_of_missing_process_fails() {
        // Above the largest pid_max Linux allows (2^22).
        assert!(start_time(5_000_000).is_err());
    }

    #[test]
    fn parse_record_reads_numbers_and_home() {
        assert_eq!(parse_record(b"123 456\n"), Some((123, 456, None)));
        assert_eq!(
            parse_record(b"123 456\n/tmp/agentrun-home-a b\n"),
            Some((123, 456, Some(PathBuf::from("/tmp/agentrun-home-a b"))))
        );
        assert_eq!(parse_record(b"123"), None);
        assert_eq!(parse_record(b"x 456"), None);
    }

    #[test]
    fn records_are_listed_and_removed_on_drop() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let state = dir.path().join("run");
        let record = record(&state, 77, std::process::id(), Path::new("/nonexistent"))
            .expect("record written");
        fs::write(state.join("notes.txt"), "not a record").expect("write");
        assert_eq!(recorded_jobs(&state).expect("listed"), vec![77]);
        drop(record);
        assert_eq!(recorded_jobs(&state).expect("listed"), Vec::<u64>::new());
        assert_eq!(
            recorded_jobs(&dir.path().join("missing")).expect("listed"),
            Vec::<u64>::new()
        );
    }

    /// Starts `sleep 60` leading a process group of its own.
    fn sleeper() -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .expect("starting sleep")
    }

    #[test]
    fn stop_recorded_skips_a_reused_pid() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let mut child = sleeper();
        let pid = child.id();
        let start = start_time(pid).expect("child stat");
        // The child's pid with a start time it never had: a pid that another process reused.
        fs::write(dir.path().join("5.job"), format!("{pid} {}\n", start + 1)).expect("write");

        assert!(!stop_recorded(dir.path(), 5).expect("stopped"));
        assert!(!dir.path().join("5.job").exists());
        assert_eq!(
            child.try_wait().expect("child state"),
            None,
            "the child was killed"
        );
        child.kill().expect("killing the child");
        child.wait().expect("reaping the child");
    }

    #[test]
    fn stop_recorded_kills_the_recorded_group() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let home = dir.path().join(format!("{HOME_PREFIX}job9"));
        fs::create_dir(&home).expect("create HOME");
        fs::write(home.join(".history"), "left by the agent").expect("write");
        let mut child = sleeper();
        let record = record(dir.path(), 9, child.id(), &home).expect("record written");
        // A record left by an engine that was killed: the file stays.
        std::mem::forget(record);

        assert!(stop_recorded(dir.path(), 9).expect("stopped"));
        let status = child.wait().expect("reaping the child");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(!dir.path().join("9.job").exists());
        assert!(!home.exists(), "the job's HOME folder is removed");
        assert!(!stop_recorded(dir.path(), 6).expect("nothing recorded"));
    }

    /// A record that names a folder this backend does not create leaves that folder alone.
    #[test]
    fn stop_recorded_keeps_a_foreign_folder() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let foreign = dir.path().join("precious");
        fs::create_dir(&foreign).expect("create folder");
        let mut text = b"5000000 1\n".to_vec();
        text.extend_from_slice(foreign.as_os_str().as_bytes());
        fs::write(dir.path().join("4.job"), text).expect("write");

        assert!(!stop_recorded(dir.path(), 4).expect("stopped"));
        assert!(dir.path().join("precious").is_dir());
        assert!(!dir.path().join("4.job").exists());
    }

    /// The jobs of an engine process that is gone are stopped, and its subfolder is removed.
    /// The subfolder of a running process (this one) is kept with its records.
    #[test]
    fn stop_dead_owners_keeps_live_owner() {
        let shared = tempfile::tempdir().expect("temporary folder");
        // A process that existed and was reaped: its pid and start time name no process now.
        let mut gone = std::process::Command::new("true")
            .spawn()
            .expect("start true");
        let gone_pid = gone.id();
        gone.wait().expect("reap true");
        let dead_owner = shared.path().join(format!("{gone_pid}-1"));
        let mut orphan = sleeper();
        let home = shared.path().join(format!("{HOME_PREFIX}orphan"));
        fs::create_dir(&home).expect("create HOME");
        std::mem::forget(record(&dead_owner, 21, orphan.id(), &home).expect("record written"));

        let live_owner = owner_dir(shared.path()).expect("own subfolder");
        let mut running = sleeper();
        let _live = record(&live_owner, 22, running.id(), Path::new("/nonexistent"))
            .expect("record written");
        fs::create_dir(shared.path().join("not-an-owner")).expect("create folder");

        assert_eq!(stop_dead_owners(shared.path()).expect("swept"), vec![21]);
        let status = orphan.wait().expect("reaping the orphan");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(!dead_owner.exists());
        assert!(!home.exists());
        assert_eq!(recorded_jobs(&live_owner).expect("listed"), vec![22]);
        assert_eq!(
            running.try_wait().expect("state"),
            None,
            "a live job was killed"
        );
        assert!(shared.path().join("not-an-owner").is_dir());
        running.kill().expect("killing the sleeper");
        running.wait().expect("reaping the sleeper");
        assert_eq!(
            stop_dead_owners(&shared.path().join("missing")).expect("swept"),
            Vec::<u64>::new()
        );
    }
}
