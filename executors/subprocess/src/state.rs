//! Records of running jobs in a state folder, so that an engine that was killed with SIGKILL
//! can stop the agents it left running once it starts again.
//!
//! Each running job has a file `<job id>.job` that contains the agent's process id (which is
//! also its process group id) and the process's start time from `/proc/PID/stat`, in clock
//! ticks since boot. A pid can be reused by an unrelated process once the agent is gone, so a
//! recorded group is killed only while a process with that pid and that start time exists.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// File name suffix of a job record.
const RECORD_SUFFIX: &str = ".job";

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

/// Records that job `job_id` runs the process group led by `pid`, in `dir` (created when
/// missing).
///
/// # Errors
///
/// Failure to create the folder, read the process's start time or write the file.
pub(crate) fn record(dir: &Path, job_id: u64, pid: u32) -> io::Result<JobRecord> {
    fs::create_dir_all(dir)?;
    let start = start_time(pid)?;
    let path = record_path(dir, job_id);
    // Written under a temporary name and renamed, so that a reader never sees half a record.
    let partial = dir.join(format!("{job_id}{RECORD_SUFFIX}.partial"));
    fs::write(&partial, format!("{pid} {start}\n"))?;
    fs::rename(&partial, &path)?;
    Ok(JobRecord { path })
}

/// Stops the process group that job `job_id` left running, if its record exists and its
/// leader still runs with the recorded start time, and removes the record. Returns true when
/// a group was killed.
///
/// # Errors
///
/// Failure to read or remove the record, other than its absence.
pub(crate) fn stop_recorded(dir: &Path, job_id: u64) -> io::Result<bool> {
    let path = record_path(dir, job_id);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    let killed = match parse_record(&text) {
        Some((pid, start)) if start_time(pid).is_ok_and(|now| now == start) => {
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
    fs::remove_file(&path)?;
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

/// Reads `PID START` from a record.
fn parse_record(text: &str) -> Option<(u32, u64)> {
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse().ok()?;
    let start = words.next()?.parse().ok()?;
    Some((pid, start))
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
    fn parse_record_reads_two_numbers() {
        assert_eq!(parse_record("123 456\n"), Some((123, 456)));
        assert_eq!(parse_record("123"), None);
        assert_eq!(parse_record("x 456"), None);
    }

    #[test]
    fn records_are_listed_and_removed_on_drop() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let state = dir.path().join("run");
        let record = record(&state, 77, std::process::id()).expect("record written");
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
        let mut child = sleeper();
        let record = record(dir.path(), 9, child.id()).expect("record written");
        // A record left by an engine that was killed: the file stays.
        std::mem::forget(record);

        assert!(stop_recorded(dir.path(), 9).expect("stopped"));
        let status = child.wait().expect("reaping the child");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(!dir.path().join("9.job").exists());
        assert!(!stop_recorded(dir.path(), 6).expect("nothing recorded"));
    }
}
