//! Notifications of finished jobs, for requests that wait for a result (`?wait=true`).

use tokio::sync::broadcast;

/// Number of finished-job notifications a slow waiter may fall behind by before it must
/// re-read the store.
const CAPACITY: usize = 1024;

/// A broadcast of the ids of jobs whose end was recorded.
#[derive(Debug)]
pub(crate) struct Events {
    finished: broadcast::Sender<u64>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            finished: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Events {
    /// Announces that job `id` has a final state in the store.
    pub(crate) fn send_finished(&self, id: u64) {
        // Without a receiver no request is waiting, so the error is ignored.
        let _ = self.finished.send(id);
    }

    /// Subscribes to finished jobs. Subscribe before reading a job's state, so that an end
    /// recorded in between is not missed.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<u64> {
        self.finished.subscribe()
    }
}
