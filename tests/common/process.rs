//! Whether a process still runs, for tests that check that an agent or its children are gone.

#![allow(dead_code)]

/// Returns true while a process with this pid has a thread that is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    // A process whose main thread has exited shows as a zombie while its other threads still
    // run (a Go program such as podman shutting down does this), so every thread is checked.
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    threads.filter_map(Result::ok).any(|thread| {
        std::fs::read_to_string(thread.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name in parentheses, which may contain spaces.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
        })
    })
}
