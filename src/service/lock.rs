//! The exclusive lock that keeps a second service off a data folder.
//!
//! Two services on one data folder would each recover and sweep the other's jobs, delete the
//! other's uploads and fight over the database. The first service therefore holds an exclusive
//! `flock(2)` on `<data_dir>/agentrun.lock` for as long as it runs, and writes its pid into the
//! file so that a second one can name it. The kernel drops the lock when the process exits,
//! also after SIGKILL, so a stale file never blocks a start.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::ServiceError;

/// File name of the lock inside the data folder.
pub(crate) const LOCK_FILE: &str = "agentrun.lock";

/// The held lock; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
}

/// Takes the lock on `data_dir`, which must exist.
///
/// # Errors
///
/// [`ServiceError::DataDirLocked`] when another process holds it, with that process's pid
/// when the file names one, and [`ServiceError::DataDir`] when the file cannot be opened or
/// written.
pub(crate) fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, ServiceError> {
    let path = data_dir.join(LOCK_FILE);
    let io_error = |source| ServiceError::DataDir {
        path: path.clone(),
        source,
    };
    // No truncation at open: the file contains the holder's pid until the lock is ours.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(ServiceError::DataDirLocked {
                data_dir: data_dir.to_owned(),
                pid: read_pid(&mut file),
            })
        }
        Err(TryLockError::Error(source)) => return Err(io_error(source)),
    }

    file.set_len(0).map_err(io_error)?;
    file.rewind().map_err(io_error)?;
    writeln!(file, "{}", std::process::id()).map_err(io_error)?;
    Ok(DataDirLock { _file: file })
}

/// Returns the pid written in a lock file, when it contains one.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second lock on the same folder fails and names the holder's pid; after the first is
    /// dropped, the folder can be locked again.
    #[test]
    fn second_lock_fails_with_pid() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = lock_data_dir(dir.path()).expect("first lock");
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).expect("read lock file");
        assert_eq!(text.trim(), std::process::id().to_string());

        let error = lock_data_dir(dir.path()).expect_err("second lock");
        match &error {
            ServiceError::DataDirLocked { data_dir, pid } => {
                assert_eq!(data_dir, dir.path());
                assert_eq!(*pid, Some(std::process::id()));
            }
            other => panic!("unexpected error: {other}"),
        }
        let message = error.to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );

        drop(first);
        lock_data_dir(dir.path()).expect("lock after release");
    }
}
