//! The warm pool: containers created, attached and started ahead of demand, so that a job skips
//! the runtime's container initialisation and start, which are most of a cold job's time.
//!
//! Each pooled container runs its agent, blocked on its first stdin read. A job takes one,
//! writes its message, half-closes stdin, reads the output, waits for the exit and removes the
//! container, as a cold job does after its start. When a job ends, pooled or cold, the pool
//! starts replacements in the background until the job's key again has its target number.
//!
//! # What a pooled agent sees
//!
//! Exactly what a cold agent sees. The pool is keyed by the whole container specification of
//! the job with its name and job-id label left out: image, environment, user, limits, network,
//! hardening, runtime. A job only gets a container whose specification equals the one its cold
//! run would have sent, so two integrations, or two requests with different environments, never
//! share a container.
//!
//! Attach happens before start, as for a cold job, and the attach stream's reader runs from the
//! start on. Output the agent writes while it waits stays queued in the reader's channel, and
//! the job that takes the container reads it first, so a banner counts as the job's output. A
//! container whose stream ends while it waits has died (its agent exited early or it was
//! killed): it is removed and never handed to a job.
//!
//! # Cleanup
//!
//! Pooled containers carry the engine label and [`LABEL_WARM_POOL`], but no job-id label. A
//! ready container unused for `warm_pool_idle_secs` is removed, dropping the executor removes
//! the rest, and [`Executor::sweep`](agentrun_executor::Executor::sweep) removes any left by a
//! crashed engine, since they belong to no job.
//!
//! # Known Limitations
//!
//! - [`Executor::recover`](agentrun_executor::Executor::recover) cannot find a pooled job after
//!   an engine restart, because its container has no job-id label; the job counts as lost and
//!   a sweep removes its container.
//! - [`JobOutcome::started_at`](agentrun_executor::JobOutcome::started_at) of a pooled job is
//!   the time the job took the container, not the earlier start of the agent.
//! - A key's pool fills after its first job. Requests whose environment differs every time get
//!   no warm container and leave idle ones behind until they expire.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentrun_executor::{ExecutorError, JobSpec, OutputCapture, LABEL_DEADLINE, LABEL_JOB_ID};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, warn, Instrument};

use crate::connect::Connection;
use crate::libpod::CreateSpec;
use crate::run::{
    attach, create, run_started, spawn_reader, start, Container, Ran, Started, StopSignals,
};
use crate::{PodmanConfig, EXECUTOR};

/// Label on every pooled container, with the value `true`, so that operators can tell them
/// apart from job containers.
pub const LABEL_WARM_POOL: &str = "io.agentrun.warm-pool";

/// Longest pause before a key whose containers keep dying while they wait is filled again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How often the pool looks for containers past their idle expiry, at most.
const MAX_REAP_INTERVAL: Duration = Duration::from_secs(5);

/// Counts of the warm pool, over all keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmPoolStats {
    /// Containers started and waiting for a job.
    pub ready: usize,
    /// Containers being created or started.
    pub starting: usize,
    /// Jobs that got a warm container.
    pub hits: u64,
    /// Jobs of a pooled integration that found none and ran cold.
    pub misses: u64,
    /// Waiting containers found dead and removed.
    pub discarded: u64,
}

/// The warm pool of one executor. Dropping it removes every waiting container.
pub(crate) struct WarmPool {
    shared: Arc<Shared>,
}

struct Shared {
    default_size: usize,
    per_integration: BTreeMap<String, usize>,
    idle: Duration,
    state: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
    discarded: AtomicU64,
}

#[derive(Default)]
struct State {
    slots: HashMap<String, Slot>,
    reaper: Option<JoinHandle<()>>,
    closed: bool,
}

/// The containers of one key.
struct Slot {
    /// Specification of every container of this key, less the name.
    spec: CreateSpec,
    target: usize,
    ready: VecDeque<Ready>,
    starting: usize,
    /// Containers of this key that died while they waited, since one was last taken.
    deaths: u32,
    /// No new containers before this instant, after deaths.
    paused_until: Option<Instant>,
}

/// A started container waiting for a job.
struct Ready {
    started: Started,
    watch: Watch,
    since: Instant,
}

/// A container a job has taken.
pub(crate) struct Claimed {
    started: Started,
}

/// The task that notices a waiting container's death.
struct Watch {
    take: Option<oneshot::Sender<()>>,
    /// Returns true when the container was taken alive.
    task: JoinHandle<bool>,
}

impl WarmPool {
    /// Returns a pool for `config`, or `None` when no integration gets warm containers.
    pub(crate) fn new(config: &PodmanConfig) -> Option<Self> {
        if config.warm_pool_size == 0 && config.warm_pool_integrations.values().all(|n| *n == 0) {
            return None;
        }
        Some(Self {
            shared: Arc::new(Shared {
                default_size: config.warm_pool_size,
                per_integration: config.warm_pool_integrations.clone(),
                idle: Duration::from_secs(config.warm_pool_idle_secs),
                state: Mutex::new(State::default()),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                discarded: AtomicU64::new(0),
            }),
        })
    }

    /// Returns the current counts.
    pub(crate) fn stats(&self) -> WarmPoolStats {
        let state = self.shared.lock();
        let mut stats = WarmPoolStats {
            hits: self.shared.hits.load(Ordering::Relaxed),
            misses: self.shared.misses.load(Ordering::Relaxed),
            discarded: self.shared.discarded.load(Ordering::Relaxed),
            ..WarmPoolStats::default()
        };
        for slot in state.slots.values() {
            stats.ready += slot.ready.len();
            stats.starting += slot.starting;
        }
        stats
    }

    /// Takes a live container made from `spec` on `connection`, or returns `None` when the key
    /// has none ready. Containers found dead on the way are removed.
    pub(crate) async fn claim(
        &self,
        connection: &Connection,
        integration: &str,
        spec: &CreateSpec,
    ) -> Option<Claimed> {
        if self.shared.target(integration) == 0 {
            return None;
        }
        let key = pool_key(connection, spec);
        loop {
            let ready = {
                let mut state = self.shared.lock();
                state
                    .slots
                    .get_mut(&key)
                    .and_then(|slot| slot.ready.pop_front())
            };
            let Some(ready) = ready else {
                self.shared.misses.fetch_add(1, Ordering::Relaxed);
                debug!("no warm container ready, running cold");
                return None;
            };
            if let Some(claimed) = ready.claim().await {
                self.shared.hits.fetch_add(1, Ordering::Relaxed);
                if let Some(slot) = self.shared.lock().slots.get_mut(&key) {
                    slot.deaths = 0;
                    slot.paused_until = None;
                }
                debug!(container_id = %claimed.id(), "warm container taken");
                return Some(claimed);
            }
            self.shared.discarded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Starts containers made from `spec` in the background until its key has its target
    /// number ready or starting. Does nothing while the key is paused after deaths.
    pub(crate) fn replenish(&self, connection: &Connection, integration: &str, spec: &CreateSpec) {
        let target = self.shared.target(integration);
        if target == 0 {
            return;
        }
        let key = pool_key(connection, spec);
        let mut state = self.shared.lock();
        if state.closed {
            return;
        }
        if state.reaper.is_none() {
            state.reaper = Some(tokio::spawn(reap(Arc::downgrade(&self.shared))));
        }
        let slot = state.slots.entry(key.clone()).or_insert_with(|| Slot {
            spec: pool_spec(spec),
            target,
            ready: VecDeque::new(),
            starting: 0,
            deaths: 0,
            paused_until: None,
        });
        if slot
            .paused_until
            .is_some_and(|until| Instant::now() < until)
        {
            return;
        }
        let missing = slot.target.saturating_sub(slot.ready.len() + slot.starting);
        slot.starting += missing;
        for _ in 0..missing {
            let shared = Arc::clone(&self.shared);
            let connection = connection.clone();
            let key = key.clone();
            let mut spec = slot.spec.clone();
            spec.name = Some(pool_container_name());
            tokio::spawn(
                async move { shared.start_one(connection, key, spec).await }
                    .instrument(tracing::debug_span!("warm_pool", executor = EXECUTOR)),
            );
        }
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        if let Some(reaper) = state.reaper.take() {
            reaper.abort();
        }
        // Dropping a ready container removes it in the background.
        let slots = std::mem::take(&mut state.slots);
        drop(state);
        let count: usize = slots.values().map(|slot| slot.ready.len()).sum();
        if count > 0 {
            debug!(
                executor = EXECUTOR,
                count, "removing the warm pool's containers"
            );
        }
        drop(slots);
    }
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys contain environment values, which may be secrets: show counts only.
        f.debug_struct("WarmPool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state whole (pushes, pops and counter updates), so a
        // poisoned lock still holds a usable state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn target(&self, integration: &str) -> usize {
        self.per_integration
            .get(integration)
            .copied()
            .unwrap_or(self.default_size)
    }

    /// Creates, attaches and starts one container and adds it to its key's ready list.
    async fn start_one(self: Arc<Self>, connection: Connection, key: String, spec: CreateSpec) {
        let began = Instant::now();
        let (done, dead) = oneshot::channel::<()>();
        let result = create_attach_start(connection, &spec, done).await;
        let mut state = self.lock();
        let closed = state.closed;
        let Some(slot) = state.slots.get_mut(&key) else {
            return;
        };
        slot.starting = slot.starting.saturating_sub(1);
        match result {
            Ok(started) if !closed => {
                let id = started.container.reference.clone();
                debug!(
                    container_id = %id,
                    elapsed_ms = began.elapsed().as_millis() as u64,
                    "warm container ready"
                );
                let watch = Watch::spawn(Arc::downgrade(&self), key, id, dead);
                slot.ready.push_back(Ready {
                    started,
                    watch,
                    since: Instant::now(),
                });
            }
            // The pool closed meanwhile: dropping the container removes it.
            Ok(_) => {}
            Err(error) => {
                warn!(%error, "starting a warm container failed");
                slot.pause();
            }
        }
    }

    /// Removes a container whose stream ended while it waited, and pauses its key.
    fn discard(&self, key: &str, id: &str) {
        let mut state = self.lock();
        let Some(slot) = state.slots.get_mut(key) else {
            return;
        };
        let Some(index) = slot
            .ready
            .iter()
            .position(|ready| ready.started.container.reference == id)
        else {
            return;
        };
        let dead = slot.ready.remove(index);
        slot.pause();
        drop(state);
        self.discarded.fetch_add(1, Ordering::Relaxed);
        warn!(
            container_id = %id,
            "a warm container stopped before a job took it; removing it"
        );
        drop(dead);
    }
}

/// Creates, attaches and starts a container. `done` is dropped when its output stream ends.
async fn create_attach_start(
    connection: Connection,
    spec: &CreateSpec,
    done: oneshot::Sender<()>,
) -> Result<Started, ExecutorError> {
    // The container removes itself when dropped, on every failure below.
    let mut container = Container::new(connection.clone(), spec.name.clone().unwrap_or_default());
    let id = create(&connection, spec).await?;
    container.set_id(id);
    let (reader, writer) = attach(&container).await?;
    let (output, reader_task) = spawn_reader(reader, done);
    start(&container).await?;
    Ok(Started {
        container,
        writer,
        output,
        reader_task,
        started_at: SystemTime::now(),
    })
}

impl Slot {
    /// Pauses filling for a time that doubles with each death, up to [`MAX_BACKOFF`], so that an
    /// agent that exits without waiting for its message does not make the pool start containers
    /// without end.
    fn pause(&mut self) {
        self.deaths = self.deaths.saturating_add(1);
        let backoff = Duration::from_millis(250)
            .saturating_mul(1 << self.deaths.min(8))
            .min(MAX_BACKOFF);
        self.paused_until = Some(Instant::now() + backoff);
    }
}

impl Ready {
    /// Stops watching the container and returns it, or `None` when it has died (it is then
    /// removed).
    async fn claim(mut self) -> Option<Claimed> {
        if let Some(take) = self.watch.take.take() {
            // A watch that already returned has dropped its receiver.
            let _ = take.send(());
        }
        match (&mut self.watch.task).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(error) => {
                warn!(%error, "watching the warm container failed; removing the container");
                return None;
            }
        }
        let mut started = self.started;
        started.started_at = SystemTime::now();
        Some(Claimed { started })
    }
}

impl Claimed {
    /// Returns the container id.
    pub(crate) fn id(&self) -> &str {
        &self.started.container.reference
    }

    /// Runs `job` in the container and removes it.
    pub(crate) async fn run(
        self,
        job: &JobSpec,
        stop: &StopSignals,
        capture: &mut OutputCapture,
    ) -> Result<Ran, ExecutorError> {
        run_started(self.started, job, stop, capture).await
    }
}

impl Watch {
    fn spawn(shared: Weak<Shared>, key: String, id: String, dead: oneshot::Receiver<()>) -> Self {
        let (take, taken) = oneshot::channel::<()>();
        let task = tokio::spawn(
            async move {
                tokio::select! {
                    // Checked first: a container that died is never handed out.
                    biased;
                    _ = dead => {
                        if let Some(shared) = shared.upgrade() {
                            shared.discard(&key, &id);
                        }
                        false
                    }
                    _ = taken => true,
                }
            }
            .in_current_span(),
        );
        Self {
            take: Some(take),
            task,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Returns the specification of a pooled container: the job's without its name and job-id and
/// deadline labels, with [`LABEL_WARM_POOL`].
fn pool_spec(spec: &CreateSpec) -> CreateSpec {
    let mut spec = spec.clone();
    spec.name = None;
    spec.labels.remove(LABEL_JOB_ID);
    spec.labels.remove(LABEL_DEADLINE);
    spec.labels
        .insert(LABEL_WARM_POOL.to_owned(), "true".to_owned());
    spec
}

/// Returns the pool key of a job's specification: the socket it runs on and the specification
/// without its name and job-id and deadline labels, as JSON. The specification's maps are sorted, so equal
/// specifications give equal keys.
pub(crate) fn pool_key(connection: &Connection, spec: &CreateSpec) -> String {
    let mut spec = spec.clone();
    spec.name = None;
    spec.labels.remove(LABEL_JOB_ID);
    spec.labels.remove(LABEL_DEADLINE);
    let json = match serde_json::to_string(&spec) {
        Ok(json) => json,
        // The specification is plain data, which always serializes; an error would only make
        // this job's key unique.
        Err(error) => format!("unserializable: {error}"),
    };
    format!("{}\n{json}", connection.socket.display())
}

/// Returns a container name no other container uses: a process-wide counter and the time.
fn pool_container_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!("agentrun-pool-{nanos:x}-{count}")
}

/// Removes ready containers that waited longer than the idle expiry, until the pool is gone.
async fn reap(shared: Weak<Shared>) {
    let interval = match shared.upgrade() {
        Some(shared) => (shared.idle / 4).clamp(Duration::from_millis(100), MAX_REAP_INTERVAL),
        None => return,
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let expired: Vec<Ready> = {
            let mut state = shared.lock();
            let mut expired = Vec::new();
            for slot in state.slots.values_mut() {
                while slot
                    .ready
                    .front()
                    .is_some_and(|ready| ready.since.elapsed() >= shared.idle)
                {
                    expired.extend(slot.ready.pop_front());
                }
            }
            state
                .slots
                .retain(|_, slot| !slot.ready.is_empty() || slot.starting > 0);
            expired
        };
        drop(shared);
        for ready in expired {
            let Ready { started, watch, .. } = ready;
            drop(watch);
            let mut container = started.container;
            debug!(executor = EXECUTOR, container_id = %container.reference, "warm container expired");
            container.remove().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentrun_executor::LABEL_ENGINE;
    use std::path::PathBuf;

    fn connection() -> Connection {
        Connection::new(PathBuf::from("/run/test.sock"), None)
    }

    fn spec(job_id: &str, env: &[(&str, &str)]) -> CreateSpec {
        CreateSpec {
            image: "agentrun/echo:1".to_owned(),
            name: Some(format!("agentrun-{job_id}-1")),
            env: env
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            labels: BTreeMap::from([
                (LABEL_ENGINE.to_owned(), "agentrun".to_owned()),
                (LABEL_JOB_ID.to_owned(), job_id.to_owned()),
                (LABEL_DEADLINE.to_owned(), format!("17000000{job_id}")),
            ]),
            ..CreateSpec::default()
        }
    }

    #[test]
    fn key_ignores_job_id_and_name() {
        let connection = connection();
        assert_eq!(
            pool_key(&connection, &spec("1", &[("A", "1")])),
            pool_key(&connection, &spec("2", &[("A", "1")]))
        );
    }

    #[test]
    fn key_differs_by_env_image_user_and_socket() {
        let connection = connection();
        let base = spec("1", &[("A", "1")]);
        let key = pool_key(&connection, &base);
        assert_ne!(key, pool_key(&connection, &spec("1", &[("A", "2")])));
        assert_ne!(key, pool_key(&connection, &spec("1", &[])));

        let mut image = base.clone();
        image.image = "agentrun/echo:2".to_owned();
        assert_ne!(key, pool_key(&connection, &image));

        let mut user = base.clone();
        user.user = Some("65534".to_owned());
        assert_ne!(key, pool_key(&connection, &user));

        let other = Connection::new(PathBuf::from("/run/other.sock"), None);
        assert_ne!(key, pool_key(&other, &base));
    }

    #[test]
    fn pool_spec_swaps_job_label_and_name() {
        let pooled = pool_spec(&spec("7", &[]));
        assert!(!pooled.labels.contains_key(LABEL_DEADLINE));
        assert_eq!(pooled.name, None);
        assert!(!pooled.labels.contains_key(LABEL_JOB_ID));
        assert_eq!(pooled.labels[LABEL_WARM_POOL], "true");
        assert_eq!(pooled.labels[LABEL_ENGINE], "agentrun");
    }

    #[test]
    fn pool_names_differ() {
        assert_ne!(pool_container_name(), pool_container_name());
    }
}
