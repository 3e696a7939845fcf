//! Containment for subprocess agents: running as another user, and resource limits. Both are
//! applied in the forked child, between `fork` and `exec`.

use std::ffi::CString;
use std::io;

use agentrun_executor::Limits;
use nix::unistd::{Gid, Group, Uid, User};
use tokio::process::Command;

/// Why the agent user named in [`Limits::user`] could not be resolved.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UserError {
    /// The user part is empty, as in `:group` or ``.
    #[error("agent user `{spec}` names no user: write `NAME`, `UID`, `NAME:GROUP` or `UID:GID`")]
    Empty {
        /// The specification as configured.
        spec: String,
    },
    /// No passwd entry for a user name.
    #[error("agent user `{name}` does not exist on this machine: create it or give a numeric uid")]
    UnknownUser {
        /// The user name.
        name: String,
    },
    /// No group entry for a group name.
    #[error(
        "agent group `{name}` does not exist on this machine: create it or give a numeric gid"
    )]
    UnknownGroup {
        /// The group name.
        name: String,
    },
    /// A numeric uid without a passwd entry and without a group: the group cannot be chosen.
    #[error(
        "agent user `{uid}` has no passwd entry, so its group is unknown: write it as `{uid}:GID`"
    )]
    NoPrimaryGroup {
        /// The uid.
        uid: u32,
    },
    /// The user or group database could not be read.
    #[error("looking up agent user `{spec}` failed: {errno}")]
    Lookup {
        /// The specification as configured.
        spec: String,
        /// The error from the C library.
        errno: nix::errno::Errno,
    },
}

/// A resolved agent user: ids and supplementary groups, looked up before `fork` because the
/// user database functions are not safe to call in the forked child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AgentUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
}

/// Resolves `NAME`, `UID`, `NAME:GROUP` or `UID:GID` (names and numbers may be mixed).
///
/// Without a group, the user's primary group from the passwd entry is used. Supplementary groups
/// come from the group database for users with a passwd entry; otherwise the only group is the
/// primary one.
pub(crate) fn resolve_user(spec: &str) -> Result<AgentUser, UserError> {
    let lookup_error = |errno| UserError::Lookup {
        spec: spec.to_owned(),
        errno,
    };
    let (user_part, group_part) = match spec.split_once(':') {
        Some((user, group)) => (user.trim(), Some(group.trim())),
        None => (spec.trim(), None),
    };
    if user_part.is_empty() {
        return Err(UserError::Empty {
            spec: spec.to_owned(),
        });
    }

    // The user: a number is a uid even without a passwd entry; a name must exist.
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)).map_err(lookup_error)?,
        Err(_) => Some(
            User::from_name(user_part)
                .map_err(lookup_error)?
                .ok_or_else(|| UserError::UnknownUser {
                    name: user_part.to_owned(),
                })?,
        ),
    };
    let uid = match &entry {
        Some(user) => user.uid.as_raw(),
        None => user_part
            .parse::<u32>()
            .map_err(|_| UserError::UnknownUser {
                name: user_part.to_owned(),
            })?,
    };

    // The group: given explicitly, or the primary group of the passwd entry.
    let gid = match group_part.filter(|group| !group.is_empty()) {
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => Group::from_name(group)
                .map_err(lookup_error)?
                .ok_or_else(|| UserError::UnknownGroup {
                    name: group.to_owned(),
                })?
                .gid
                .as_raw(),
        },
        None => match &entry {
            Some(user) => user.gid.as_raw(),
            None => return Err(UserError::NoPrimaryGroup { uid }),
        },
    };

    // Supplementary groups of a named user, as a login would set them.
    let groups = match &entry {
        Some(user) => {
            let name = CString::new(user.name.as_str()).map_err(|_| UserError::UnknownUser {
                name: user.name.clone(),
            })?;
            let mut groups: Vec<libc::gid_t> = nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
                .map_err(lookup_error)?
                .into_iter()
                .map(Gid::as_raw)
                .collect();
            if !groups.contains(&gid) {
                groups.insert(0, gid);
            }
            groups
        }
        None => vec![gid],
    };

    Ok(AgentUser { uid, gid, groups })
}

/// One resource limit to apply in the child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ResourceLimit {
    pub resource: libc::__rlimit_resource_t,
    pub soft: libc::rlim_t,
    pub hard: libc::rlim_t,
}

/// Turns the rlimit fields of [`Limits`] into the limits to apply.
///
/// `cpu_seconds` gets a hard limit one second above the soft one, so the agent first receives
/// `SIGXCPU` (which it may catch to report) and then `SIGKILL`.
pub(crate) fn resource_limits(limits: &Limits) -> Vec<ResourceLimit> {
    let mut result = Vec::new();
    let mut add = |resource, soft: u64, hard: u64| {
        result.push(ResourceLimit {
            resource,
            soft: soft as libc::rlim_t,
            hard: hard as libc::rlim_t,
        });
    };
    if let Some(value) = limits.nofile {
        add(libc::RLIMIT_NOFILE, value, value);
    }
    if let Some(value) = limits.nproc {
        add(libc::RLIMIT_NPROC, value, value);
    }
    if let Some(value) = limits.cpu_seconds {
        add(libc::RLIMIT_CPU, value, value.saturating_add(1));
    }
    if let Some(value) = limits.address_space_bytes {
        add(libc::RLIMIT_AS, value, value);
    }
    result
}

/// Makes the child apply `limits` and then switch to `user` before `exec`.
///
/// Limits are applied first, while the child may still raise its hard limits, but each value is
/// capped at the hard limit the engine itself has, so a limit only ever lowers what the agent
/// could use. The user switch sets the supplementary groups, then the group, then the user:
/// once the uid is dropped, the process could no longer change its groups.
pub(crate) fn configure_child(
    command: &mut Command,
    limits: Vec<ResourceLimit>,
    user: Option<AgentUser>,
) {
    if limits.is_empty() && user.is_none() {
        return;
    }
    let child_setup = move || -> io::Result<()> {
        for limit in &limits {
            apply_limit(limit)?;
        }
        if let Some(user) = &user {
            switch_user(user)?;
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before `exec`, where only async-signal-safe
    // functions may be called. It calls only `getrlimit`, `setrlimit`, `setgroups`, `setgid`
    // and `setuid`, which are thin system call wrappers. It reads data resolved before the
    // fork and does not allocate or take locks. `io::Error::last_os_error` only reads `errno`.
    unsafe {
        command.pre_exec(child_setup);
    }
}

/// Applies one limit, capped at the current hard limit. Runs in the forked child.
fn apply_limit(limit: &ResourceLimit) -> io::Result<()> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `current` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(limit.resource, &mut current) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let hard = limit.hard.min(current.rlim_max);
    let new = libc::rlimit {
        rlim_cur: limit.soft.min(hard),
        rlim_max: hard,
    };
    // SAFETY: `new` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(limit.resource, &new) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Switches to `user` with its groups. Runs in the forked child.
fn switch_user(user: &AgentUser) -> io::Result<()> {
    // SAFETY: the pointer and length describe `user.groups`, which lives for the call.
    if unsafe { libc::setgroups(user.groups.len(), user.groups.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain system call with an integer argument.
    if unsafe { libc::setgid(user.gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain system call with an integer argument.
    if unsafe { libc::setuid(user.uid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Returns true when the engine runs with effective uid 0, the only case where it can switch
/// the agent to another user.
pub(crate) fn engine_is_root() -> bool {
    Uid::effective().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_user_by_name() {
        let user = resolve_user("root").expect("root exists on every Linux machine");
        assert_eq!(user.uid, 0);
        assert_eq!(user.gid, 0);
        assert!(user.groups.contains(&0));
    }

    #[test]
    fn resolve_user_numeric_with_group() {
        let user = resolve_user("4242:4343").expect("numeric ids need no database entry");
        assert_eq!(
            user,
            AgentUser {
                uid: 4242,
                gid: 4343,
                groups: vec![4343]
            }
        );
    }

    #[test]
    fn resolve_user_named_group() {
        let user = resolve_user("0:root").expect("group root exists");
        assert_eq!(user.gid, 0);
    }

    #[test]
    fn resolve_user_rejects_unknown_names() {
        assert_eq!(
            resolve_user("agentrun-no-such-user"),
            Err(UserError::UnknownUser {
                name: "agentrun-no-such-user".to_owned()
            })
        );
        assert_eq!(
            resolve_user("root:agentrun-no-such-group"),
            Err(UserError::UnknownGroup {
                name: "agentrun-no-such-group".to_owned()
            })
        );
    }

    #[test]
    fn resolve_user_numeric_without_entry_needs_group() {
        assert_eq!(
            resolve_user("4242"),
            Err(UserError::NoPrimaryGroup { uid: 4242 })
        );
    }

    #[test]
    fn resolve_user_rejects_empty_user() {
        assert_eq!(
            resolve_user(":0"),
            Err(UserError::Empty {
                spec: ":0".to_owned()
            })
        );
    }

    #[test]
    fn resource_limits_maps_fields() {
        let limits = Limits {
            nofile: Some(64),
            cpu_seconds: Some(5),
            ..Limits::default()
        };
        assert_eq!(
            resource_limits(&limits),
            [
                ResourceLimit {
                    resource: libc::RLIMIT_NOFILE,
                    soft: 64,
                    hard: 64
                },
                ResourceLimit {
                    resource: libc::RLIMIT_CPU,
                    soft: 5,
                    hard: 6
                },
            ]
        );
    }
}
