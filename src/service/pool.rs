//! The worker pool: takes queued jobs from the store in id order and runs them.
//!
//! The queue is the store's `jobs` table, so the pool keeps only the jobs it runs in memory: a
//! cancellation token and the integration per running job. One scheduler task claims jobs with
//! [`Store::claim_jobs`] whenever a job is submitted or finishes, within the global
//! (`jobs.concurrency`) and per-integration (`jobs.per_integration`) limits, and spawns one task
//! per claimed job. A job is marked `running` in the store before its agent starts, which is
//! what lets a restarted service find it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentrun_executor::CancellationToken;
use tokio::sync::Notify;
use tracing::Instrument;
use uuid::Uuid;

use super::Service;
use crate::dispatcher::{Integration, JobStatus, WorkRequest};
use crate::error::Error;
use crate::store::{ClaimLimits, JobFinish, JobRecord, JobState, StoreError};

/// Why a running job was cancelled; it decides the message recorded with the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CancelReason {
    /// `DELETE /v1/jobs/{id}`.
    Api,
    /// The integration was deleted.
    IntegrationDeleted,
    /// The service stopped and the shutdown grace period ended.
    Shutdown,
}

impl CancelReason {
    fn message(self) -> &'static str {
        match self {
            Self::Api => "the job was cancelled through the API and its agent was killed",
            Self::IntegrationDeleted => {
                "the integration was deleted while the job ran, so its agent was killed"
            }
            Self::Shutdown => {
                "the service stopped before the job finished: the shutdown grace period ended, \
                 so its agent was killed"
            }
        }
    }
}

#[derive(Debug)]
struct RunningJob {
    agent_id: Uuid,
    cancel: CancellationToken,
    reason: Option<CancelReason>,
}

/// The pool's shared state.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    running: Mutex<HashMap<u64, RunningJob>>,
    /// Wakes the scheduler: a job was submitted, finished, or an integration became ready.
    wake: Notify,
    /// Wakes tasks that wait for the pool to drain.
    finished: Notify,
    /// Set once the service stops taking jobs.
    stopped: CancellationToken,
    /// Claims in progress: the store already records their jobs as running, but they are not
    /// in `running` yet, so a drain must wait for them too.
    claiming: AtomicUsize,
}

impl Pool {
    /// Asks the scheduler to look for runnable jobs.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops claiming new jobs. Running jobs go on.
    pub(crate) fn stop(&self) {
        self.stopped.cancel();
        self.wake.notify_one();
    }

    /// Returns the number of running jobs.
    pub(crate) fn running_count(&self) -> usize {
        self.lock().len()
    }

    /// Cancels running job `id`. Returns false when it does not run here.
    pub(crate) fn cancel(&self, id: u64, reason: CancelReason) -> bool {
        let mut running = self.lock();
        let Some(job) = running.get_mut(&id) else {
            return false;
        };
        job.reason.get_or_insert(reason);
        job.cancel.cancel();
        true
    }

    /// Cancels every running job of an integration and returns their ids.
    pub(crate) fn cancel_integration(&self, agent_id: Uuid, reason: CancelReason) -> Vec<u64> {
        let mut running = self.lock();
        let mut ids = Vec::new();
        for (id, job) in running
            .iter_mut()
            .filter(|(_, job)| job.agent_id == agent_id)
        {
            job.reason.get_or_insert(reason);
            job.cancel.cancel();
            ids.push(*id);
        }
        ids
    }

    /// Cancels every running job.
    pub(crate) fn cancel_all(&self, reason: CancelReason) -> usize {
        let mut running = self.lock();
        for job in running.values_mut() {
            job.reason.get_or_insert(reason);
            job.cancel.cancel();
        }
        running.len()
    }

    /// Waits until no job of `agent_id` (or no job at all, for `None`) runs, at most `timeout`.
    /// Returns true when that happened in time.
    pub(crate) async fn wait_idle(&self, agent_id: Option<Uuid>, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.finished.notified();
            let busy = {
                let running = self.lock();
                match agent_id {
                    Some(agent_id) => running.values().any(|job| job.agent_id == agent_id),
                    None => !running.is_empty() || self.claiming.load(Ordering::SeqCst) > 0,
                }
            };
            if !busy {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Waits until none of the jobs `ids` runs, at most `timeout`. Returns true when that
    /// happened in time.
    pub(crate) async fn wait_ended(&self, ids: &[u64], timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.finished.notified();
            let busy = {
                let running = self.lock();
                ids.iter().any(|id| running.contains_key(id))
            };
            if !busy {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, RunningJob>> {
        // Every critical section is a single map operation, so a poisoned map is consistent.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn running_by_integration(&self) -> HashMap<Uuid, usize> {
        let mut counts = HashMap::new();
        for job in self.lock().values() {
            *counts.entry(job.agent_id).or_insert(0) += 1;
        }
        counts
    }
}

/// Claims and starts jobs until the pool is stopped.
pub(crate) async fn schedule(service: Arc<Service>) {
    let pool = &service.pool;
    loop {
        // Counted from before the stop check, so that a drain that starts after the check
        // waits for this claim's jobs to be registered.
        pool.claiming.fetch_add(1, Ordering::SeqCst);
        let claimed = if pool.stopped.is_cancelled() {
            None
        } else {
            Some(claim_and_start(&service).await)
        };
        pool.claiming.fetch_sub(1, Ordering::SeqCst);
        pool.finished.notify_waiters();
        match claimed {
            None => break,
            Some(Ok(())) => {}
            Some(Err(error)) => {
                tracing::error!(error = %error, "claiming queued jobs failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        tokio::select! {
            () = pool.wake.notified() => {}
            () = pool.stopped.cancelled() => break,
        }
    }
    tracing::debug!("scheduler stopped");
}

/// Claims as many queued jobs as the limits allow and starts them.
async fn claim_and_start(service: &Arc<Service>) -> Result<(), StoreError> {
    let jobs = &service.config.jobs;
    let running = service.pool.running_by_integration();
    let busy: usize = running.values().sum();
    let limits = ClaimLimits {
        free: jobs.concurrency.saturating_sub(busy),
        per_integration: jobs.per_integration,
        running,
    };
    if limits.free == 0 {
        return Ok(());
    }
    for job in service.store.claim_jobs(limits).await? {
        start(service, job);
    }
    Ok(())
}

/// Registers a claimed job and spawns its task.
fn start(service: &Arc<Service>, job: JobRecord) {
    let cancel = CancellationToken::new();
    service.pool.lock().insert(
        job.id,
        RunningJob {
            agent_id: job.agent_id,
            cancel: cancel.clone(),
            reason: None,
        },
    );
    let span = tracing::info_span!("worker", job_id = job.id);
    let service = Arc::clone(service);
    service.tasks.clone().spawn(
        async move {
            let id = job.id;
            let finish = run(&service, job, cancel).await;
            let reason = service.pool.lock().get(&id).and_then(|job| job.reason);
            let finish = apply_cancel_reason(finish, reason);
            record(&service, id, finish).await;

            service.pool.lock().remove(&id);
            service.pool.finished.notify_waiters();
            service.pool.wake();
        }
        .instrument(span),
    );
}

/// Runs one claimed job and returns how it ended.
async fn run(service: &Service, job: JobRecord, cancel: CancellationToken) -> JobFinish {
    let record = match service.store.integration(job.agent_id).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            return failure(
                JobState::Cancelled,
                "the integration was deleted before the job started".to_owned(),
            )
        }
        Err(error) => {
            return failure(
                JobState::Error,
                format!(
                    "reading the integration failed: {}",
                    crate::error::error_chain(&error)
                ),
            )
        }
    };
    let Some(prepared) = record.prepared.clone() else {
        return failure(
            JobState::Error,
            format!(
                "the integration's package is {} and cannot run jobs",
                record.state.as_str()
            ),
        );
    };

    let mut integration = Integration::new(
        record.manifest.clone(),
        record.package_root.clone(),
        record.digest.clone(),
    );
    integration.env = record.env;
    let request = WorkRequest {
        values: job.values,
        context: job.context,
        cancel,
        job_id: Some(job.id),
        ..WorkRequest::default()
    };

    match service
        .dispatcher
        .work(&integration, &prepared, request)
        .await
    {
        Ok(result) => {
            service
                .metrics
                .observe_job(&record.name, result.status, result.duration_ms);
            finish_from_result(result)
        }
        Err(Error::Form(errors)) => failure(
            JobState::Error,
            format!("the values no longer fit the integration's form, which changed after the job was submitted: {errors}"),
        ),
        Err(error) => {
            let text = crate::error::error_chain(&error);
            tracing::error!(error = %text, "the executor failed to run the job");
            failure(JobState::Error, text)
        }
    }
}

/// Turns a dispatcher result into what the store records.
pub(crate) fn finish_from_result(result: crate::dispatcher::WorkResult) -> JobFinish {
    let state = JobState::from(result.status);
    let error = result.error.clone();
    let exit_code = result.exit_code;
    let stderr_tail = Some(result.stderr_tail.clone());
    // A result of strings, numbers and JSON values always serialises.
    let result = serde_json::to_value(&result).ok();
    JobFinish {
        state,
        result,
        error,
        exit_code,
        stderr_tail,
    }
}

fn failure(state: JobState, error: String) -> JobFinish {
    JobFinish {
        state,
        result: None,
        error: Some(error),
        exit_code: None,
        stderr_tail: None,
    }
}

/// Replaces the generic cancellation text with the reason recorded for the job.
fn apply_cancel_reason(mut finish: JobFinish, reason: Option<CancelReason>) -> JobFinish {
    let Some(reason) = reason else {
        return finish;
    };
    if finish.state != JobState::Cancelled {
        return finish;
    }
    let message = reason.message().to_owned();
    if let Some(serde_json::Value::Object(result)) = &mut finish.result {
        result.insert(
            "error".to_owned(),
            serde_json::Value::String(message.clone()),
        );
        result.insert(
            "status".to_owned(),
            serde_json::Value::String(JobStatus::Cancelled.as_str().to_owned()),
        );
    }
    finish.error = Some(message);
    finish
}

/// Stores a job's end, retrying a failed write so that a finished job is not left `running`.
pub(crate) async fn record(service: &Service, id: u64, finish: JobFinish) {
    let state = finish.state;
    for attempt in 1..=3 {
        match service.store.finish_job(id, finish.clone()).await {
            Ok(true) => {
                service.events.send_finished(id);
                tracing::debug!(state = state.as_str(), "job recorded");
                return;
            }
            Ok(false) => {
                tracing::warn!(
                    state = state.as_str(),
                    "the job was no longer running in the store; its result was not recorded"
                );
                service.events.send_finished(id);
                return;
            }
            Err(error) => {
                tracing::error!(error = %error, attempt, "recording the job result failed");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
        }
    }
}
