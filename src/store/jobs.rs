//! Job records and the queue: submitted values, state, result and timings.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{now_ms, Store, StoreError};
use crate::dispatcher::JobStatus;
use crate::forms::Context;

/// The state of a job. `queued` and `running` change; every other state is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobState {
    /// Accepted and waiting for a worker.
    Queued,
    /// A worker started its agent.
    Running,
    /// The agent replied with `return_code` 0.
    Succeeded,
    /// The agent replied with a non-zero `return_code`.
    Failed,
    /// The agent gave no valid reply, or the executor failed to run it.
    Error,
    /// The agent did not finish within the deadline and was killed.
    TimedOut,
    /// The job was cancelled: through the API, by deleting its integration or because the
    /// service stopped.
    Cancelled,
    /// The service stopped while the agent ran and could not recover its result; the job was
    /// not run again.
    Interrupted,
}

impl JobState {
    /// Every state, in the order metrics list them.
    pub const ALL: &'static [JobState] = &[
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Error,
        JobState::TimedOut,
        JobState::Cancelled,
        JobState::Interrupted,
    ];

    /// Returns the state as stored and serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Error => "error",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }

    /// Parses a state as [`JobState::as_str`] writes it.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|state| state.as_str() == text)
    }

    /// Returns true for states that never change again.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

impl From<JobStatus> for JobState {
    fn from(status: JobStatus) -> Self {
        match status {
            JobStatus::Succeeded => Self::Succeeded,
            JobStatus::Failed => Self::Failed,
            JobStatus::TimedOut => Self::TimedOut,
            JobStatus::Cancelled => Self::Cancelled,
            // `JobStatus` is non-exhaustive; an unknown end is reported as an error.
            _ => Self::Error,
        }
    }
}

/// A job to insert with [`Store::insert_job`].
#[derive(Clone, Debug)]
pub struct NewJob {
    /// Job id, from the service's job id generator.
    pub id: u64,
    /// The integration.
    pub agent_id: Uuid,
    /// Values the user gave, as `(field, value)`.
    pub values: Vec<(String, String)>,
    /// The UI context.
    pub context: Context,
}

/// A stored job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    /// Job id, as sent to the agent.
    pub id: u64,
    /// The integration's agentID.
    pub agent_id: Uuid,
    /// The integration's name when the job was submitted.
    pub integration: String,
    /// Current state.
    pub state: JobState,
    /// Values the user gave, as `(field, value)`.
    pub values: Vec<(String, String)>,
    /// The UI context.
    pub context: Context,
    /// The result, with the fields of `agentrun run --json`, once the agent ran.
    pub result: Option<serde_json::Value>,
    /// The reason the job has no result, or the result's error text.
    pub error: Option<String>,
    /// The agent's exit code, when known.
    pub exit_code: Option<i32>,
    /// The end of the agent's stderr.
    pub stderr_tail: Option<String>,
    /// Submission time, epoch milliseconds.
    pub submitted_ms: i64,
    /// Start time, epoch milliseconds.
    pub started_ms: Option<i64>,
    /// End time, epoch milliseconds.
    pub finished_ms: Option<i64>,
}

/// The end of a job, for [`Store::finish_job`].
#[derive(Clone, Debug, PartialEq)]
pub struct JobFinish {
    /// Final state.
    pub state: JobState,
    /// The result JSON, when the agent ran.
    pub result: Option<serde_json::Value>,
    /// The failure reason.
    pub error: Option<String>,
    /// The agent's exit code.
    pub exit_code: Option<i32>,
    /// The end of the agent's stderr.
    pub stderr_tail: Option<String>,
}

/// The filter and page of [`Store::jobs`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs of this integration.
    pub agent_id: Option<Uuid>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs with a smaller id: the cursor of the next page.
    pub before: Option<u64>,
    /// Maximum number of jobs.
    pub limit: usize,
}

/// The limits of one [`Store::claim_jobs`] call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimLimits {
    /// Free worker slots.
    pub free: usize,
    /// Maximum running jobs per integration.
    pub per_integration: usize,
    /// Jobs running now, by integration.
    pub running: HashMap<Uuid, usize>,
}

/// The number of jobs of one integration in one state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateCount {
    /// The integration's name, as recorded with its jobs.
    pub integration: String,
    /// The state.
    pub state: JobState,
    /// Number of jobs.
    pub count: u64,
}

const COLUMNS: &str = "id, agent_id, integration, state, input_values, context, result, error, \
                       exit_code, stderr_tail, submitted_ms, started_ms, finished_ms";

fn to_sql_id(id: u64) -> i64 {
    // Job ids are epoch milliseconds, far below i64::MAX; saturating keeps a forged id from
    // wrapping to a negative number.
    i64::try_from(id).unwrap_or(i64::MAX)
}

fn read_row(row: &Row<'_>) -> Result<JobRecord, StoreError> {
    let sqlite = StoreError::sqlite("reading a job");
    let id: i64 = row.get(0).map_err(sqlite)?;
    let corrupt = |what: &'static str, message: String| StoreError::Corrupt {
        what,
        id: id.to_string(),
        message,
    };
    let get_text = |index: usize| -> Result<Option<String>, StoreError> {
        row.get(index).map_err(StoreError::sqlite("reading a job"))
    };
    let get_int = |index: usize| -> Result<Option<i64>, StoreError> {
        row.get(index).map_err(StoreError::sqlite("reading a job"))
    };

    let agent_id = Uuid::parse_str(&get_text(1)?.unwrap_or_default())
        .map_err(|error| corrupt("agent_id", error.to_string()))?;
    let state_text = get_text(3)?.unwrap_or_default();
    let state = JobState::parse(&state_text)
        .ok_or_else(|| corrupt("state", format!("unknown state {state_text:?}")))?;
    let values = serde_json::from_str(&get_text(4)?.unwrap_or_default())
        .map_err(|error| corrupt("values", error.to_string()))?;
    let context = serde_json::from_str(&get_text(5)?.unwrap_or_default())
        .map_err(|error| corrupt("context", error.to_string()))?;
    let result = match get_text(6)? {
        Some(json) => Some(
            serde_json::from_str(&json).map_err(|error| corrupt("result", error.to_string()))?,
        ),
        None => None,
    };

    Ok(JobRecord {
        id: u64::try_from(id).unwrap_or(0),
        agent_id,
        integration: get_text(2)?.unwrap_or_default(),
        state,
        values,
        context,
        result,
        error: get_text(7)?,
        exit_code: get_int(8)?.and_then(|code| i32::try_from(code).ok()),
        stderr_tail: get_text(9)?,
        submitted_ms: get_int(10)?.unwrap_or(0),
        started_ms: get_int(11)?,
        finished_ms: get_int(12)?,
    })
}

fn get(connection: &Connection, id: u64) -> Result<Option<JobRecord>, StoreError> {
    let mut statement = connection
        .prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"))
        .map_err(StoreError::sqlite("reading a job"))?;
    let mut rows = statement
        .query([to_sql_id(id)])
        .map_err(StoreError::sqlite("reading a job"))?;
    match rows.next().map_err(StoreError::sqlite("reading a job"))? {
        Some(row) => read_row(row).map(Some),
        None => Ok(None),
    }
}

fn collect(mut rows: rusqlite::Rows<'_>) -> Result<Vec<JobRecord>, StoreError> {
    let mut records = Vec::new();
    while let Some(row) = rows.next().map_err(StoreError::sqlite("reading jobs"))? {
        records.push(read_row(row)?);
    }
    Ok(records)
}

impl Store {
    /// Inserts a queued job and commits it. Returns `None`, inserting nothing, when the
    /// integration does not exist.
    ///
    /// # Errors
    ///
    /// [`StoreError::QueueFull`] when `max_queued` jobs are queued.
    pub async fn insert_job(
        &self,
        new: NewJob,
        max_queued: u64,
    ) -> Result<Option<JobRecord>, StoreError> {
        self.call(move |connection, _| {
            let transaction = connection
                .transaction()
                .map_err(StoreError::sqlite("inserting a job"))?;
            let name: Option<String> = transaction
                .query_row(
                    "SELECT name FROM integrations WHERE agent_id = ?1",
                    [new.agent_id.to_string()],
                    |row| row.get(0),
                )
                .optional()
                .map_err(StoreError::sqlite("inserting a job"))?;
            let Some(name) = name else {
                return Ok(None);
            };
            let queued: i64 = transaction
                .query_row(
                    "SELECT count(*) FROM jobs WHERE state = 'queued'",
                    [],
                    |row| row.get(0),
                )
                .map_err(StoreError::sqlite("inserting a job"))?;
            if u64::try_from(queued).unwrap_or(0) >= max_queued {
                return Err(StoreError::QueueFull { max_queued });
            }

            // Serialising string pairs and a context of strings and JSON values cannot fail.
            let values = serde_json::to_string(&new.values).unwrap_or_default();
            let context = serde_json::to_string(&new.context).unwrap_or_default();
            transaction
                .execute(
                    "INSERT INTO jobs (id, agent_id, integration, state, input_values, context, \
                     submitted_ms) VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6)",
                    params![
                        to_sql_id(new.id),
                        new.agent_id.to_string(),
                        name,
                        values,
                        context,
                        now_ms()
                    ],
                )
                .map_err(StoreError::sqlite("inserting a job"))?;
            let record = get(&transaction, new.id)?;
            transaction
                .commit()
                .map_err(StoreError::sqlite("inserting a job"))?;
            Ok(record)
        })
        .await
    }

    /// Returns the job `id`.
    ///
    /// # Errors
    ///
    /// Database failures.
    pub async fn job(&self, id: u64) -> Result<Option<JobRecord>, StoreError> {
        self.call(move |connection, _| get(connection, id)).await
    }

    /// Returns true when an integration `agent_id` exists or any stored job belongs to one, as
    /// the jobs of a deleted integration still do.
    ///
    /// # Errors
    ///
    /// Database failures.
    pub async fn is_agent_recorded(&self, agent_id: Uuid) -> Result<bool, StoreError> {
        self.call(move |connection, _| {
            connection
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM integrations WHERE agent_id = ?1) \
                     OR EXISTS (SELECT 1 FROM jobs WHERE agent_id = ?1)",
                    [agent_id.to_string()],
                    |row| row.get::<_, bool>(0),
                )
                .map_err(StoreError::sqlite("looking up an agentID"))
        })
        .await
    }

    /// Lists jobs, newest first.
    ///
    /// # Errors
    ///
    /// Database failures.
    pub async fn jobs(&self, filter: JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        self.call(move |connection, _| {
            let mut statement = connection
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM jobs \
                     WHERE (?1 IS NULL OR agent_id = ?1) AND (?2 IS NULL OR state = ?2) \
                     AND (?3 IS NULL OR id < ?3) ORDER BY id DESC LIMIT ?4"
                ))
                .map_err(StoreError::sqlite("listing jobs"))?;
            let rows = statement
                .query(params![
                    filter.agent_id.map(|id| id.to_string()),
                    filter.state.map(JobState::as_str),
                    filter.before.map(to_sql_id),
                    i64::try_from(filter.limit).unwrap_or(i64::MAX),
                ])
                .map_err(StoreError::sqlite("listing jobs"))?;
            collect(rows)
        })
        .await
    }

    /// Marks the oldest runnable queued jobs as running and returns them, in one transaction.
    ///
    /// A job is runnable when its integration is `ready` and runs fewer than
    /// `limits.per_integration` jobs. Jobs are taken in id order among runnable ones, at most
    /// `limits.free` of them.
    ///
    /// # Errors
    ///
    /// Database failures.
    pub async fn claim_jobs(&self, limits: ClaimLimits) -> Result<Vec<JobRecord>, StoreError> {
        self.call(move |connection, _| {
            if limits.free == 0 {
                return Ok(Vec::new());
            }
            let transaction = connection
                .transaction()
                .map_err(StoreError::sqlite("claiming jobs"))?;
            let mut running = limits.running;
            let mut claimed = Vec::new();
            {
                let mut ready = transaction
                    .prepare_cached("SELECT agent_id FROM integrations WHERE state = 'ready'")
                    .map_err(StoreError::sqlite("claiming jobs"))?;
                let agents: Vec<String> = ready
                    .query_map([], |row| row.get(0))
                    .map_err(StoreError::sqlite("claiming jobs"))?
                    .collect::<Result<_, _>>()
                    .map_err(StoreError::sqlite("claiming jobs"))?;
                let mut head = transaction
                    .prepare_cached(
                        "SELECT min(id) FROM jobs WHERE agent_id = ?1 AND state = 'queued'",
                    )
                    .map_err(StoreError::sqlite("claiming jobs"))?;
                let mut claim = transaction
                    .prepare_cached(
                        "UPDATE jobs SET state = 'running', started_ms = ?2 \
                         WHERE id = ?1 AND state = 'queued'",
                    )
                    .map_err(StoreError::sqlite("claiming jobs"))?;

                // The oldest queued job of each integration with room; taking the smallest of
                // those heads, one at a time, gives id order across integrations.
                let mut heads: Vec<(i64, String)> = Vec::new();
                for agent in agents {
                    let Ok(uuid) = Uuid::parse_str(&agent) else {
                        continue;
                    };
                    if running.get(&uuid).copied().unwrap_or(0) >= limits.per_integration {
                        continue;
                    }
                    let first: Option<i64> = head
                        .query_row([&agent], |row| row.get(0))
                        .map_err(StoreError::sqlite("claiming jobs"))?;
                    if let Some(first) = first {
                        heads.push((first, agent));
                    }
                }
                while claimed.len() < limits.free {
                    let Some(index) = heads
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, (id, _))| *id)
                        .map(|(index, _)| index)
                    else {
                        break;
                    };
                    let (id, agent) = heads.swap_remove(index);
                    claim
                        .execute(params![id, now_ms()])
                        .map_err(StoreError::sqlite("claiming jobs"))?;
                    claimed.push(u64::try_from(id).unwrap_or(0));

                    let uuid = Uuid::parse_str(&agent).unwrap_or_default();
                    let count = running.entry(uuid).or_insert(0);
                    *count += 1;
                    if *count < limits.per_integration {
                        let next: Option<i64> = head
                            .query_row([&agent], |row| row.get(0))
                            .map_err(StoreError::sqlite("claiming jobs"))?;
                        if let Some(next) = next {
                            heads.push((next, agent));
                        }
                    }
                }
            }
            let mut records = Vec::with_capacity(claimed.len());
            for id in claimed {
                if let Some(record) = get(&transaction, id)? {
                    records.push(record);
                }
            }
            transaction
                .commit()
                .map_err(StoreError::sqlite("claiming jobs"))?;
            Ok(records)
        })
        .await
    }

    /// Records the end of a running job. Returns false, changing nothing, when the job is not
    /// running.
    ///
    /// # Errors
    ///
    /// Database failures.
    pub async fn finish_job(&self, id: u64, finish: JobFinish) -> Result<bool, StoreError> {
        self.call(move |connection, _| {
            let changed = connection
                .execute(
                    "UPDATE jobs SET state = ?2, result = ?3, error = ?4, exit_code = ?5, \
                     stderr_tail = ?6, finished_ms = ?7 WHERE id = ?1 AND state = 'running'",
                    params![
                        to_sql_id(id),
                        finish.state.as_str(),
                        finish.result.map(|result| result.to_string()),
                        finish.error,
                        finish.exit_code,
                        finish.stderr_tail,
                        now_ms(),
                    ],
                )
                .map_err(StoreError::sqlite("recording a job result"))?;
            Ok(changed == 1)
        })
        .await
    }

    /// Cancels a queued job. Returns the updated record, or `None` when the job is not queued.
    ///
    /// # Errors
    ///
    /// Database failures.
    pub async fn cancel_queued_job(
        &self,
        id: u64,
        message: String,
    ) -> Result<Option<JobRecord>, StoreError> {
        self.call(move |connection, _| {
            let changed = connection
                .execute(
                    "UPDATE jobs SET state = 'cancelled', error = ?2, finished_ms = ?3 \
                     WHERE id = ?1 AND state = 'queued'",
                    params![to_sql_id(id), message, now_ms()],
                )
                .map_err(StoreError::sqlite("cancelling a job"))?;
            if changed == 0 {
                return Ok(None);
            }
            get(connection, id)
        })
        .await
    }

    /// Ends every queued job of an integration as `error` with `message`, for a package whose
    /// build failed. Returns the ids of those jobs.
    ///
    /// # Errors
    ///
    /// Database failures.
    pub async fn fail_queued_jobs(
        &self,
        agent_id: Uuid,
        message: String,
    ) -> Result<Vec<u64>, StoreError> {
        self.call(move |connection, _| {
            let transaction = connection
                .transaction()
                .map_err(StoreError::sqlite("failing queued jobs"))?;
            let ids: Vec<i64> = {
                let mut statement = transaction
                    .prepare_cached(
                        "SELECT id FROM jobs WHERE agent_id = ?1 AND state = 'queued' ORDER BY id",
                    )
                    .map_err(StoreError::sqlite("failing queued jobs"))?;
                let rows = statement
                    .query_map([agent_id.to_string()], |row| row.get(0))
                    .map_err(StoreError::sqlite("failing queued jobs"))?;
                rows.collect::<Result<_, _>>()
                    .map_err(StoreError::sqlite("failing queued jobs"))?
            };
            transaction
                .execute(
                    "UPDATE jobs SET state = 'error', error = ?2, finished_ms = ?3 \
                     WHERE agent_id = ?1 AND state = 'queued'",
                    params![agent_id.to_string(), message, now_ms()],
                )
                .map_err(StoreError::sqlite("failing queued jobs"))?;
            transaction
                .commit()
                .map_err(StoreError::sqlite("failing queued jobs"))?;
            Ok(ids
                .into_iter()
                .filter_map(|id| u64::try_from(id).ok())
                .collect())
        })
        .await
    }

    /// Returns every job in state `running`, oldest first: after a restart, the jobs a previous
    /// process left behind.
    ///
    /// # Errors
    ///
    /// Database failures.
    pub async fn running_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.call(|connection, _| {
            let mut statement = connection
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM jobs WHERE state = 'running' ORDER BY id"
                ))
                .map_err(StoreError::sqlite("listing running jobs"))?;
            let rows = statement
                .query([])
                .map_err(StoreError::sqlite("listing running jobs"))?;
            collect(rows)
        })
        .await
    }

    /// Returns the highest job id stored, or 0.
    ///
    /// # Errors
    ///
    /// Database failures.
    pub async fn max_job_id(&self) -> Result<u64, StoreError> {
        self.call(|connection, _| {
            let id: Option<i64> = connection
                .query_row("SELECT max(id) FROM jobs", [], |row| row.get(0))
                .map_err(StoreError::sqlite("reading the highest job id"))?;
            Ok(id.and_then(|id| u64::try_from(id).ok()).unwrap_or(0))
        })
        .await
    }

    /// Returns the number of jobs by integration name and state.
    ///
    /// # Errors
    ///
    /// Database failures.
    pub async fn job_counts(&self) -> Result<Vec<StateCount>, StoreError> {
        self.call(|connection, _| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT integration, state, count(*) FROM jobs GROUP BY integration, state",
                )
                .map_err(StoreError::sqlite("counting jobs"))?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })
                .map_err(StoreError::sqlite("counting jobs"))?;
            let mut counts = Vec::new();
            for row in rows {
                let (integration, state, count) =
                    row.map_err(StoreError::sqlite("counting jobs"))?;
                if let Some(state) = JobState::parse(&state) {
                    counts.push(StateCount {
                        integration,
                        state,
                        count: u64::try_from(count).unwrap_or(0),
                    });
                }
            }
            Ok(counts)
        })
        .await
    }
}
