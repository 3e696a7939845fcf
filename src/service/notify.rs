//! Service manager notifications over `$NOTIFY_SOCKET` (the `sd_notify` protocol).
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) every call does nothing. A failed send is
//! logged and otherwise ignored: the service works the same without a manager that listens.

use sd_notify::NotifyState;

/// Sends `READY=1`: the listeners are bound and requests are served.
pub(crate) fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving requests")]);
}

/// Sends `STOPPING=1`: shutdown has begun.
pub(crate) fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining running jobs"),
    ]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(error = %error, "sending a notification to the service manager failed");
    }
}
