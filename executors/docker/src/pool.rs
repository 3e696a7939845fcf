//! The warm pool: containers created, attached and started ahead of demand, so that a job skips
//! the runtime's container start, which is most of a cold job's time.
//!
//! Each pooled container runs its agent, blocked on its first stdin read. A job takes one,
//! writes its message, half-closes stdin, reads the output, waits for the exit and removes the
//! container, as a cold job does from step 3 on. When a job ends, pooled or cold, the pool starts
//! replacements in the background until the job's key again has its target number of containers.
//!
//! # What a pooled agent sees
//!
//! Exactly what a cold agent sees. The pool is keyed by the whole create request of the job with
//! its job-id label left out: image, environment in order, user, limits, network, hardening. A
//! job only gets a container whose create request equals the one its cold run would have sent,
//! so two integrations, or two requests with different environments, never share a container.
//!
//! Attach happens before start, as for a cold job. While a container waits, a task reads its
//! output into a buffer (at most [`IDLE_OUTPUT_BYTES`], after which the agent blocks on its
//! write). The job that takes the container gets that output first, so a banner the agent wrote
//! at start counts as the job's output. A container whose output ends while it waits has died
//! (its agent exited early or it was killed): it is removed and never handed to a job.
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
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use agentrun_executor::{
    ExecutorError, ExitStatus, JobEnd, JobSpec, OutputCapture, LABEL_DEADLINE, LABEL_JOB_ID,
};
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::AttachContainerOptions;
use bollard::Docker;
use futures_util::{Stream, StreamExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, warn, Instrument};

use crate::connect::engine_error;
use crate::run::{
    collect, kill_and_wait, short_id, spawn_writer, wait_exit, Collected, RemovalGuard, Stop,
};
use crate::{DockerConfig, DockerExecutor, EXECUTOR};

/// Label on every pooled container, with the value `true`, so that operators can tell them
/// apart from job containers.
pub const LABEL_WARM_POOL: &str = "io.agentrun.warm-pool";

/// Output a waiting container may write before a job takes it, in bytes. Past it the pool stops
/// reading and the agent blocks on its write until a job takes the container.
pub const IDLE_OUTPUT_BYTES: usize = 1024 * 1024;

/// Longest pause before a key whose containers keep dying while they wait is filled again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How often the pool looks for containers past their idle expiry, at most.
const MAX_REAP_INTERVAL: Duration = Duration::from_secs(5);

/// The output stream of an attached container.
type OutputStream = Pin<Box<dyn Stream<Item = Result<LogOutput, BollardError>> + Send>>;

/// The stdin half of an attached container.
type InputSink = Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

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
    docker: Docker,
    host: String,
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
    /// Create request of every container of this key.
    body: ContainerCreateBody,
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
    guard: RemovalGuard,
    input: InputSink,
    idle: IdleReader,
    since: Instant,
}

/// A container a job has taken: its output so far and the streams to go on with.
pub(crate) struct Claimed {
    guard: RemovalGuard,
    input: InputSink,
    output: OutputStream,
    early: Vec<LogOutput>,
}

impl Claimed {
    /// Returns the container id.
    pub(crate) fn id(&self) -> &str {
        self.guard.id()
    }
}

/// The task that reads a waiting container's output.
struct IdleReader {
    take: Option<oneshot::Sender<()>>,
    task: JoinHandle<IdleOutput>,
}

/// What the idle reader hands over: the stream (unless it ended) and the output read so far.
struct IdleOutput {
    output: Option<OutputStream>,
    early: Vec<LogOutput>,
}

impl WarmPool {
    /// Returns a pool for `config`, or `None` when no integration gets warm containers.
    pub(crate) fn new(docker: &Docker, host: &str, config: &DockerConfig) -> Option<Self> {
        if config.warm_pool_size == 0 && config.warm_pool_integrations.values().all(|n| *n == 0) {
            return None;
        }
        Some(Self {
            shared: Arc::new(Shared {
                docker: docker.clone(),
                host: host.to_owned(),
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

    /// Takes a live container made from `body`, or returns `None` when the key has none ready.
    /// Containers found dead on the way are removed.
    pub(crate) async fn claim(
        &self,
        integration: &str,
        body: &ContainerCreateBody,
    ) -> Option<Claimed> {
        if self.shared.target(integration) == 0 {
            return None;
        }
        let key = pool_key(body);
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
                debug!(
                    container_id = short_id(claimed.id()),
                    "warm container taken"
                );
                return Some(claimed);
            }
            self.shared.discarded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Starts containers made from `body` in the background until its key has its target
    /// number ready or starting. Does nothing while the key is paused after deaths.
    pub(crate) fn replenish(&self, integration: &str, body: &ContainerCreateBody) {
        let target = self.shared.target(integration);
        if target == 0 {
            return;
        }
        let key = pool_key(body);
        let mut state = self.shared.lock();
        if state.closed {
            return;
        }
        if state.reaper.is_none() {
            state.reaper = Some(tokio::spawn(reap(Arc::downgrade(&self.shared))));
        }
        let slot = state.slots.entry(key.clone()).or_insert_with(|| Slot {
            body: pool_body(body),
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
            let key = key.clone();
            let body = slot.body.clone();
            tokio::spawn(
                async move { shared.start_one(key, body).await }
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
        // Dropping a ready container's guard removes the container in the background.
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
    async fn start_one(self: Arc<Self>, key: String, body: ContainerCreateBody) {
        let started = Instant::now();
        let result = self.create_attach_start(body).await;
        let mut state = self.lock();
        let closed = state.closed;
        let Some(slot) = state.slots.get_mut(&key) else {
            return;
        };
        slot.starting = slot.starting.saturating_sub(1);
        match result {
            Ok((guard, input, output)) if !closed => {
                let id = guard.id().to_owned();
                debug!(
                    container_id = short_id(&id),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "warm container ready"
                );
                let idle = IdleReader::spawn(Arc::downgrade(&self), key, id, output);
                slot.ready.push_back(Ready {
                    guard,
                    input,
                    idle,
                    since: Instant::now(),
                });
            }
            // The pool closed meanwhile: dropping the guard removes the container.
            Ok(_) => {}
            Err(error) => {
                warn!(%error, "starting a warm container failed");
                slot.pause();
            }
        }
    }

    async fn create_attach_start(
        &self,
        body: ContainerCreateBody,
    ) -> Result<(RemovalGuard, InputSink, OutputStream), ExecutorError> {
        let created = self
            .docker
            .create_container(None, body)
            .await
            .map_err(|error| engine_error(&self.host, "create container", error))?;
        let guard = RemovalGuard::with_docker(self.docker.clone(), created.id);
        let options = AttachContainerOptions {
            detach_keys: None,
            logs: false,
            stream: true,
            stdin: true,
            stdout: true,
            stderr: true,
        };
        let attached = self
            .docker
            .attach_container(guard.id(), Some(options))
            .await
            .map_err(|error| engine_error(&self.host, "attach", error))?;
        self.docker
            .start_container(guard.id(), None)
            .await
            .map_err(|error| engine_error(&self.host, "start container", error))?;
        Ok((guard, attached.input, attached.output))
    }

    /// Removes a container whose output ended while it waited, and pauses its key.
    fn discard(&self, key: &str, id: &str) {
        let mut state = self.lock();
        let Some(slot) = state.slots.get_mut(key) else {
            return;
        };
        let Some(index) = slot.ready.iter().position(|ready| ready.guard.id() == id) else {
            return;
        };
        let dead = slot.ready.remove(index);
        slot.pause();
        drop(state);
        self.discarded.fetch_add(1, Ordering::Relaxed);
        warn!(
            container_id = short_id(id),
            "a warm container stopped before a job took it; removing it"
        );
        drop(dead);
    }
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
    /// Stops the idle reader and returns the container, or `None` when it has died (it is then
    /// removed).
    async fn claim(mut self) -> Option<Claimed> {
        if let Some(take) = self.idle.take.take() {
            // An idle reader that already returned has dropped its receiver; its output then
            // shows whether the stream ended.
            let _ = take.send(());
        }
        let idle = match (&mut self.idle.task).await {
            Ok(idle) => idle,
            Err(error) => {
                warn!(%error, "the warm container's output reader failed; removing the container");
                return None;
            }
        };
        let output = idle.output?;
        Some(Claimed {
            guard: self.guard,
            input: self.input,
            output,
            early: idle.early,
        })
    }
}

impl IdleReader {
    fn spawn(shared: Weak<Shared>, key: String, id: String, mut output: OutputStream) -> Self {
        let (take, mut taken) = oneshot::channel::<()>();
        let task = tokio::spawn(
            async move {
                let mut early = Vec::new();
                let mut early_bytes = 0;
                loop {
                    tokio::select! {
                        biased;
                        _ = &mut taken => return IdleOutput { output: Some(output), early },
                        item = output.next(), if early_bytes < IDLE_OUTPUT_BYTES => match item {
                            Some(Ok(chunk)) => {
                                early_bytes += chunk.as_ref().len();
                                early.push(chunk);
                            }
                            Some(Err(_)) | None => {
                                if let Some(shared) = shared.upgrade() {
                                    shared.discard(&key, &id);
                                }
                                return IdleOutput { output: None, early };
                            }
                        },
                    }
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

impl Drop for IdleReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs `job` in a claimed container and returns how it ended, its exit status and its output.
/// The caller removes the container.
pub(crate) async fn run_claimed(
    executor: &DockerExecutor,
    id: &str,
    input: InputSink,
    output: OutputStream,
    early: Vec<LogOutput>,
    job: &JobSpec,
) -> Result<(JobEnd, ExitStatus, OutputCapture), ExecutorError> {
    let stop = Stop::new(job);
    let mut capture = OutputCapture::new(job.max_stdout_bytes, job.stderr_tail_bytes);

    // Output from before the take, then the message, then the rest of the output.
    let collected = stop
        .run(async {
            if !feed_early(early, &mut capture) {
                return Ok(Collected::StdoutLimit);
            }
            let _writer = spawn_writer(input, job.stdin.clone());
            collect(executor, output, &mut capture).await
        })
        .await;
    let end = match collected {
        Ok(Ok(Collected::StreamEnded)) => JobEnd::Exited,
        Ok(Ok(Collected::StdoutLimit)) => JobEnd::StdoutLimit,
        Ok(Err(error)) => return Err(error),
        Err(stopped) => stopped.end(),
    };

    let (end, exit) = if end == JobEnd::Exited {
        match stop
            .run(wait_exit(&executor.docker, &executor.host, id))
            .await
        {
            Ok(exit) => (end, exit?),
            Err(stopped) => (stopped.end(), kill_and_wait(executor, id).await?),
        }
    } else {
        (end, kill_and_wait(executor, id).await?)
    };
    Ok((end, exit, capture))
}

/// Feeds output read before the take into `capture`. Returns false once stdout passed its cap.
fn feed_early(early: Vec<LogOutput>, capture: &mut OutputCapture) -> bool {
    for chunk in early {
        match chunk {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                if !capture.push_stdout(&message) {
                    return false;
                }
            }
            LogOutput::StdErr { message } => capture.push_stderr(&message),
            LogOutput::StdIn { .. } => {}
        }
    }
    true
}

/// Runs one job in a warm container when the pool has one for it. Returns `None` when it has
/// none; the caller then runs the job cold.
pub(crate) async fn run_warm(
    executor: &DockerExecutor,
    pool: &WarmPool,
    integration: &str,
    body: &ContainerCreateBody,
    job: &JobSpec,
) -> Option<Result<(JobEnd, ExitStatus, OutputCapture, String, SystemTime), ExecutorError>> {
    let claimed = pool.claim(integration, body).await?;
    let started_at = SystemTime::now();
    let Claimed {
        guard,
        input,
        output,
        early,
    } = claimed;
    let id = guard.id().to_owned();
    tracing::Span::current().record("container_id", short_id(&id));
    let result = run_claimed(executor, &id, input, output, early, job).await;
    guard.remove().await;
    Some(result.map(|(end, exit, capture)| (end, exit, capture, id, started_at)))
}

/// Returns the create request of a pooled container: the job's without its job-id and deadline
/// labels, with [`LABEL_WARM_POOL`].
fn pool_body(body: &ContainerCreateBody) -> ContainerCreateBody {
    let mut body = body.clone();
    if let Some(labels) = &mut body.labels {
        labels.remove(LABEL_JOB_ID);
        labels.remove(LABEL_DEADLINE);
        labels.insert(LABEL_WARM_POOL.to_owned(), "true".to_owned());
    }
    body
}

/// Returns the pool key of a job's create request: the request without its job-id and deadline
/// labels, as JSON with object keys sorted, so that equal requests give equal keys.
pub(crate) fn pool_key(body: &ContainerCreateBody) -> String {
    let mut value = match serde_json::to_value(body) {
        Ok(value) => value,
        // The body is plain data (strings, numbers, maps with string keys), which always
        // serializes; an error would only make this job's key unique.
        Err(error) => return format!("unserializable: {error}"),
    };
    if let Some(labels) = value
        .get_mut("Labels")
        .and_then(serde_json::Value::as_object_mut)
    {
        labels.remove(LABEL_JOB_ID);
        labels.remove(LABEL_DEADLINE);
    }
    let mut key = String::new();
    write_canonical(&value, &mut key);
    key
}

/// Writes `value` as JSON with the keys of every object sorted.
fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (index, (name, value)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(name.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
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
            debug!(
                executor = EXECUTOR,
                container_id = short_id(ready.guard.id()),
                "warm container expired"
            );
            let Ready { guard, idle, .. } = ready;
            drop(idle);
            guard.remove().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentrun_executor::LABEL_ENGINE;

    fn body(job_id: &str, env: &[&str]) -> ContainerCreateBody {
        ContainerCreateBody {
            image: Some("agentrun/echo:1".to_owned()),
            env: Some(env.iter().map(|entry| (*entry).to_owned()).collect()),
            labels: Some(HashMap::from([
                (LABEL_ENGINE.to_owned(), "agentrun".to_owned()),
                (LABEL_JOB_ID.to_owned(), job_id.to_owned()),
                (LABEL_DEADLINE.to_owned(), format!("17000000{job_id}")),
            ])),
            ..ContainerCreateBody::default()
        }
    }

    #[test]
    fn key_ignores_job_id_and_deadline() {
        assert_eq!(
            pool_key(&body("1", &["A=1"])),
            pool_key(&body("2", &["A=1"]))
        );
    }

    #[test]
    fn key_differs_by_env_value_and_order() {
        let base = pool_key(&body("1", &["A=1", "B=2"]));
        assert_ne!(base, pool_key(&body("1", &["A=1", "B=3"])));
        assert_ne!(base, pool_key(&body("1", &["B=2", "A=1"])));
        assert_ne!(base, pool_key(&body("1", &["A=1"])));
    }

    #[test]
    fn key_differs_by_image_and_limits() {
        let base = body("1", &[]);
        let mut other_image = base.clone();
        other_image.image = Some("agentrun/echo:2".to_owned());
        assert_ne!(pool_key(&base), pool_key(&other_image));

        let mut limited = base.clone();
        limited.host_config = Some(bollard::models::HostConfig {
            memory: Some(64 * 1024 * 1024),
            ..Default::default()
        });
        assert_ne!(pool_key(&base), pool_key(&limited));

        let mut user = base.clone();
        user.user = Some("65534".to_owned());
        assert_ne!(pool_key(&base), pool_key(&user));
    }

    #[test]
    fn key_is_stable_across_label_order() {
        let mut first = body("1", &[]);
        let mut second = body("1", &[]);
        for (index, name) in ["x", "y", "z", "w"].iter().enumerate() {
            first
                .labels
                .as_mut()
                .expect("labels")
                .insert((*name).to_owned(), index.to_string());
        }
        for (index, name) in ["x", "y", "z", "w"].iter().enumerate().rev() {
            second
                .labels
                .as_mut()
                .expect("labels")
                .insert((*name).to_owned(), index.to_string());
        }
        assert_eq!(pool_key(&first), pool_key(&second));
    }

    #[test]
    fn pool_body_swaps_job_label() {
        let pooled = pool_body(&body("7", &[]));
        let labels = pooled.labels.expect("labels");
        assert!(!labels.contains_key(LABEL_JOB_ID));
        assert!(!labels.contains_key(LABEL_DEADLINE));
        assert_eq!(labels[LABEL_WARM_POOL], "true");
        assert_eq!(labels[LABEL_ENGINE], "agentrun");
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let mut slot = Slot {
            body: ContainerCreateBody::default(),
            target: 1,
            ready: VecDeque::new(),
            starting: 0,
            deaths: 0,
            paused_until: None,
        };
        let before = Instant::now();
        slot.pause();
        let first = slot.paused_until.expect("paused") - before;
        slot.pause();
        let second = slot.paused_until.expect("paused") - before;
        assert!(second > first, "{second:?} > {first:?}");
        for _ in 0..20 {
            slot.pause();
        }
        assert!(slot.paused_until.expect("paused") - Instant::now() <= MAX_BACKOFF);
    }
}
