//! Integration records: manifest, package, build state, env and last health check.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use agentrun_executor::Prepared;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{now_ms, Codecs, Store, StoreError};
use crate::manifest::{Manifest, ManifestError};

/// The state of an integration's package build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BuildState {
    /// The executor is preparing the package (building its image).
    Building,
    /// Jobs can run.
    Ready,
    /// Preparing failed, and [`IntegrationRecord::build_error`] gives the reason.
    Failed,
}

impl BuildState {
    /// Returns the state as stored and serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Building => "building",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "building" => Some(Self::Building),
            "ready" => Some(Self::Ready),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// The last health check of an integration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthRecord {
    /// When the check finished, in epoch milliseconds.
    pub checked_ms: i64,
    /// True when the agent replied with a heartbeat.
    pub healthy: bool,
    /// The dispatcher's health report as JSON, or `{"error": …}` when the check could not run.
    pub report: serde_json::Value,
}

/// A new integration for [`Store::insert_integration`].
#[derive(Clone, Debug)]
pub struct NewIntegration {
    /// The agentID ([`crate::protocol::agent_id_for`] of the name).
    pub agent_id: Uuid,
    /// The validated manifest; its `[env]` values are moved into `env` and never stored in
    /// the manifest column.
    pub manifest: Manifest,
    /// Package digest.
    pub digest: String,
    /// Unpacked package folder.
    pub package_root: PathBuf,
}

/// A stored integration, with its env decrypted. Its `Debug` output lists env names only.
#[derive(Clone)]
pub struct IntegrationRecord {
    /// The agentID.
    pub agent_id: Uuid,
    /// The name, as the manifest spells it.
    pub name: String,
    /// The manifest, with an empty `[env]`: the values live in `env`.
    pub manifest: Manifest,
    /// Digest of the current package.
    pub digest: String,
    /// Folder of the current package.
    pub package_root: PathBuf,
    /// Build state of the current package.
    pub state: BuildState,
    /// The error of the last build.
    pub build_error: Option<String>,
    /// The executor's result of preparing the package, once ready.
    pub prepared: Option<Prepared>,
    /// Env variables of the agent, in order. Secret: never log or return the values.
    pub env: Vec<(String, String)>,
    /// Creation time, epoch milliseconds.
    pub created_ms: i64,
    /// Time of the last change, epoch milliseconds.
    pub updated_ms: i64,
    /// The last health check, if any ran.
    pub health: Option<HealthRecord>,
}

impl std::fmt::Debug for IntegrationRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationRecord")
            .field("agent_id", &self.agent_id)
            .field("name", &self.name)
            .field("manifest", &self.manifest)
            .field("digest", &self.digest)
            .field("package_root", &self.package_root)
            .field("state", &self.state)
            .field("build_error", &self.build_error)
            .field("prepared", &self.prepared)
            .field("env", &self.env_keys())
            .field("created_ms", &self.created_ms)
            .field("updated_ms", &self.updated_ms)
            .field("health", &self.health)
            .finish()
    }
}

impl IntegrationRecord {
    /// Returns the env variable names, in order.
    pub fn env_keys(&self) -> Vec<String> {
        self.env.iter().map(|(key, _)| key.clone()).collect()
    }
}

/// Returns the key that makes names unique regardless of case and surrounding whitespace.
fn name_key(name: &str) -> String {
    name.trim().to_lowercase()
}

/// Splits a manifest into the stored form (no env) and its env list.
fn split_env(manifest: &Manifest) -> (Manifest, Vec<(String, String)>) {
    let mut stored = manifest.clone();
    let env = std::mem::take(&mut stored.env).into_iter().collect();
    (stored, env)
}

/// Parsed manifests by agentID, each with the JSON text it was parsed from.
///
/// Parsing a stored manifest validates it again, which compiles every field's regex, and a
/// large regex takes tens of milliseconds to compile. Lists such as `GET /v1/integrations`
/// and `/metrics` read every integration, so they reuse the parsed manifest while the stored
/// text is unchanged. Clones share the compiled regexes.
#[derive(Debug, Default)]
pub(super) struct ManifestCache {
    entries: Mutex<HashMap<Uuid, (String, Manifest)>>,
    /// Number of manifests parsed from stored text, for tests.
    parses: AtomicU64,
}

impl ManifestCache {
    /// Returns the manifest stored as `json` for `agent_id`, parsing it only when the cache
    /// has no manifest of that text.
    fn parse(&self, agent_id: Uuid, json: &str) -> Result<Manifest, ManifestError> {
        if let Some((text, manifest)) = self.lock().get(&agent_id) {
            if text == json {
                return Ok(manifest.clone());
            }
        }
        let manifest = Manifest::from_stored_json(json.as_bytes())?;
        self.parses.fetch_add(1, Ordering::Relaxed);
        self.remember(agent_id, json.to_owned(), manifest.clone());
        Ok(manifest)
    }

    /// Records the manifest that `json` stores for `agent_id`.
    fn remember(&self, agent_id: Uuid, json: String, manifest: Manifest) {
        self.lock().insert(agent_id, (json, manifest));
    }

    /// Drops the manifest of a deleted integration.
    fn forget(&self, agent_id: Uuid) {
        self.lock().remove(&agent_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (String, Manifest)>> {
        // Every critical section is a single map operation, so a poisoned map is consistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

const COLUMNS: &str = "agent_id, name, manifest, digest, package_root, state, build_error, \
                       prepared, env, created_ms, updated_ms, health_checked_ms, health_healthy, \
                       health_report";

fn read_row(row: &Row<'_>, codecs: &Codecs) -> Result<IntegrationRecord, StoreError> {
    let sqlite = StoreError::sqlite("reading an integration");
    let agent_id: String = row.get(0).map_err(sqlite)?;
    let corrupt = |what: &'static str, message: String| StoreError::Corrupt {
        what,
        id: agent_id.clone(),
        message,
    };
    let get = |index: usize| -> Result<rusqlite::types::Value, StoreError> {
        row.get(index)
            .map_err(StoreError::sqlite("reading an integration"))
    };

    let id = Uuid::parse_str(&agent_id).map_err(|error| corrupt("agent_id", error.to_string()))?;
    let name = text(get(1)?);
    let manifest = codecs
        .manifests
        .parse(id, &text(get(2)?))
        .map_err(|error| corrupt("manifest", error.to_string()))?;
    let state_text = text(get(5)?);
    let state = BuildState::parse(&state_text)
        .ok_or_else(|| corrupt("state", format!("unknown state {state_text:?}")))?;
    let prepared = match optional_text(get(7)?) {
        Some(json) => Some(
            serde_json::from_str(&json).map_err(|error| corrupt("prepared", error.to_string()))?,
        ),
        None => None,
    };
    let env_blob = match get(8)? {
        rusqlite::types::Value::Blob(blob) => blob,
        _ => Vec::new(),
    };
    let env = codecs.cipher.open_env(&id, &env_blob)?;
    let health = match (get(11)?, get(12)?, optional_text(get(13)?)) {
        (
            rusqlite::types::Value::Integer(checked_ms),
            rusqlite::types::Value::Integer(healthy),
            Some(report),
        ) => Some(HealthRecord {
            checked_ms,
            healthy: healthy != 0,
            report: serde_json::from_str(&report)
                .map_err(|error| corrupt("health_report", error.to_string()))?,
        }),
        _ => None,
    };

    Ok(IntegrationRecord {
        agent_id: id,
        name,
        manifest,
        digest: text(get(3)?),
        package_root: PathBuf::from(text(get(4)?)),
        state,
        build_error: optional_text(get(6)?),
        prepared,
        env,
        created_ms: integer(get(9)?),
        updated_ms: integer(get(10)?),
        health,
    })
}

/// Applies an env patch: a value sets the variable in place or appends it, `None` removes it.
///
/// The variables are found through a map, so a patch of 100,000 variables costs linear time.
/// Searching the list for each one took 18 s for 50,000 in a debug build, and the store served
/// no other request meanwhile.
fn apply_env_patch(
    env: Vec<(String, String)>,
    patch: Vec<(String, Option<String>)>,
) -> Vec<(String, String)> {
    let mut slots: Vec<Option<(String, String)>> = env.into_iter().map(Some).collect();
    let mut positions: HashMap<String, usize> = slots
        .iter()
        .enumerate()
        .filter_map(|(index, slot)| slot.as_ref().map(|(key, _)| (key.clone(), index)))
        .collect();
    for (key, value) in patch {
        match value {
            Some(value) => match positions.get(&key) {
                Some(&index) => slots[index] = Some((key, value)),
                None => {
                    positions.insert(key.clone(), slots.len());
                    slots.push(Some((key, value)));
                }
            },
            None => {
                if let Some(index) = positions.remove(&key) {
                    slots[index] = None;
                }
            }
        }
    }
    slots.into_iter().flatten().collect()
}

fn text(value: rusqlite::types::Value) -> String {
    optional_text(value).unwrap_or_default()
}

fn optional_text(value: rusqlite::types::Value) -> Option<String> {
    match value {
        rusqlite::types::Value::Text(text) => Some(text),
        _ => None,
    }
}

fn integer(value: rusqlite::types::Value) -> i64 {
    match value {
        rusqlite::types::Value::Integer(number) => number,
        _ => 0,
    }
}

fn manifest_json(manifest: &Manifest) -> String {
    // A validated manifest is strings, booleans, numbers and lists, which always serialise.
    serde_json::to_string(manifest).unwrap_or_default()
}

pub(super) fn get(
    connection: &Connection,
    codecs: &Codecs,
    agent_id: &Uuid,
) -> Result<Option<IntegrationRecord>, StoreError> {
    let mut statement = connection
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM integrations WHERE agent_id = ?1"
        ))
        .map_err(StoreError::sqlite("reading an integration"))?;
    let mut rows = statement
        .query([agent_id.to_string()])
        .map_err(StoreError::sqlite("reading an integration"))?;
    match rows
        .next()
        .map_err(StoreError::sqlite("reading an integration"))?
    {
        Some(row) => read_row(row, codecs).map(Some),
        None => Ok(None),
    }
}

impl Store {
    /// Returns the number of manifests parsed from stored text since the store was opened.
    #[cfg(test)]
    pub(crate) fn manifest_parses(&self) -> u64 {
        self.manifests.parses.load(Ordering::Relaxed)
    }

    /// Inserts a new integration in state `building`, with the manifest's `[env]` as its env.
    ///
    /// # Errors
    ///
    /// [`StoreError::DuplicateName`] when an integration of the same name (compared
    /// case-insensitively) exists.
    pub async fn insert_integration(
        &self,
        new: NewIntegration,
    ) -> Result<IntegrationRecord, StoreError> {
        self.call(move |connection, codecs| {
            let transaction = connection
                .transaction()
                .map_err(StoreError::sqlite("inserting an integration"))?;
            let existing: Option<String> = transaction
                .query_row(
                    "SELECT name FROM integrations WHERE name_key = ?1 OR agent_id = ?2",
                    params![name_key(&new.manifest.name), new.agent_id.to_string()],
                    |row| row.get(0),
                )
                .optional()
                .map_err(StoreError::sqlite("inserting an integration"))?;
            if let Some(existing) = existing {
                return Err(StoreError::DuplicateName { existing });
            }

            let (manifest, env) = split_env(&new.manifest);
            let json = manifest_json(&manifest);
            let now = now_ms();
            transaction
                .execute(
                    "INSERT INTO integrations (agent_id, name, name_key, manifest, digest, \
                     package_root, state, env, created_ms, updated_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'building', ?7, ?8, ?8)",
                    params![
                        new.agent_id.to_string(),
                        manifest.name,
                        name_key(&manifest.name),
                        json,
                        new.digest,
                        new.package_root.to_string_lossy(),
                        codecs.cipher.seal_env(&new.agent_id, &env),
                        now,
                    ],
                )
                .map_err(StoreError::sqlite("inserting an integration"))?;
            codecs.manifests.remember(new.agent_id, json, manifest);
            let record = get(&transaction, codecs, &new.agent_id)?;
            transaction
                .commit()
                .map_err(StoreError::sqlite("inserting an integration"))?;
            record.ok_or(StoreError::Closed)
        })
        .await
    }

    /// Returns the integration `agent_id`.
    ///
    /// # Errors
    ///
    /// Database and decryption failures.
    pub async fn integration(
        &self,
        agent_id: Uuid,
    ) -> Result<Option<IntegrationRecord>, StoreError> {
        self.call(move |connection, codecs| get(connection, codecs, &agent_id))
            .await
    }

    /// Returns every integration, ordered by name.
    ///
    /// # Errors
    ///
    /// Database and decryption failures.
    pub async fn integrations(&self) -> Result<Vec<IntegrationRecord>, StoreError> {
        self.call(|connection, codecs| {
            let mut statement = connection
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM integrations ORDER BY name_key"
                ))
                .map_err(StoreError::sqlite("listing integrations"))?;
            let mut rows = statement
                .query([])
                .map_err(StoreError::sqlite("listing integrations"))?;
            let mut records = Vec::new();
            while let Some(row) = rows
                .next()
                .map_err(StoreError::sqlite("listing integrations"))?
            {
                records.push(read_row(row, codecs)?);
            }
            Ok(records)
        })
        .await
    }

    /// Replaces an integration's manifest and package and sets it to `building`. Returns the
    /// record as it was before, or `None` when there is no such integration.
    ///
    /// The stored env is kept, and a stored value wins over the new manifest's `[env]` value for
    /// the same key, because stored values were set on purpose. Keys that only the new manifest
    /// has are appended with its values.
    ///
    /// # Errors
    ///
    /// Database and decryption failures.
    pub async fn replace_package(
        &self,
        agent_id: Uuid,
        manifest: Manifest,
        digest: String,
        package_root: PathBuf,
    ) -> Result<Option<IntegrationRecord>, StoreError> {
        self.call(move |connection, codecs| {
            let transaction = connection
                .transaction()
                .map_err(StoreError::sqlite("replacing a package"))?;
            let Some(previous) = get(&transaction, codecs, &agent_id)? else {
                return Ok(None);
            };
            let (manifest, manifest_env) = split_env(&manifest);
            let json = manifest_json(&manifest);
            let mut env = previous.env.clone();
            for (key, value) in manifest_env {
                if !env.iter().any(|(existing, _)| *existing == key) {
                    env.push((key, value));
                }
            }
            transaction
                .execute(
                    "UPDATE integrations SET name = ?2, manifest = ?3, digest = ?4, \
                     package_root = ?5, state = 'building', build_error = NULL, prepared = NULL, \
                     env = ?6, updated_ms = ?7 WHERE agent_id = ?1",
                    params![
                        agent_id.to_string(),
                        manifest.name,
                        json,
                        digest,
                        package_root.to_string_lossy(),
                        codecs.cipher.seal_env(&agent_id, &env),
                        now_ms(),
                    ],
                )
                .map_err(StoreError::sqlite("replacing a package"))?;
            transaction
                .commit()
                .map_err(StoreError::sqlite("replacing a package"))?;
            codecs.manifests.remember(agent_id, json, manifest);
            Ok(Some(previous))
        })
        .await
    }

    /// Records the end of a build of the package with `digest`. Returns false, and changes
    /// nothing, when the integration is gone or its package has been replaced since.
    ///
    /// # Errors
    ///
    /// Database failures.
    pub async fn finish_build(
        &self,
        agent_id: Uuid,
        digest: String,
        outcome: Result<Prepared, String>,
    ) -> Result<bool, StoreError> {
        self.call(move |connection, _| {
            let (state, error, prepared) = match outcome {
                Ok(prepared) => (
                    BuildState::Ready,
                    None,
                    Some(serde_json::to_string(&prepared).unwrap_or_default()),
                ),
                Err(error) => (BuildState::Failed, Some(error), None),
            };
            let changed = connection
                .execute(
                    "UPDATE integrations SET state = ?3, build_error = ?4, prepared = ?5, \
                     updated_ms = ?6 WHERE agent_id = ?1 AND digest = ?2",
                    params![
                        agent_id.to_string(),
                        digest,
                        state.as_str(),
                        error,
                        prepared,
                        now_ms()
                    ],
                )
                .map_err(StoreError::sqlite("recording a build"))?;
            Ok(changed == 1)
        })
        .await
    }

    /// Applies an env patch: `Some(value)` sets a variable (in place, or appended), `None`
    /// removes it. Returns the updated record, or `None` when there is no such integration.
    ///
    /// # Errors
    ///
    /// Database and decryption failures.
    pub async fn update_env(
        &self,
        agent_id: Uuid,
        patch: Vec<(String, Option<String>)>,
    ) -> Result<Option<IntegrationRecord>, StoreError> {
        self.call(move |connection, codecs| {
            let transaction = connection
                .transaction()
                .map_err(StoreError::sqlite("updating env"))?;
            let Some(record) = get(&transaction, codecs, &agent_id)? else {
                return Ok(None);
            };
            let env = apply_env_patch(record.env, patch);
            transaction
                .execute(
                    "UPDATE integrations SET env = ?2, updated_ms = ?3 WHERE agent_id = ?1",
                    params![
                        agent_id.to_string(),
                        codecs.cipher.seal_env(&agent_id, &env),
                        now_ms()
                    ],
                )
                .map_err(StoreError::sqlite("updating env"))?;
            let updated = get(&transaction, codecs, &agent_id)?;
            transaction
                .commit()
                .map_err(StoreError::sqlite("updating env"))?;
            Ok(updated)
        })
        .await
    }

    /// Records a health check.
    ///
    /// # Errors
    ///
    /// Database failures.
    pub async fn set_health(&self, agent_id: Uuid, health: HealthRecord) -> Result<(), StoreError> {
        self.call(move |connection, _| {
            connection
                .execute(
                    "UPDATE integrations SET health_checked_ms = ?2, health_healthy = ?3, \
                     health_report = ?4 WHERE agent_id = ?1",
                    params![
                        agent_id.to_string(),
                        health.checked_ms,
                        health.healthy,
                        health.report.to_string()
                    ],
                )
                .map_err(StoreError::sqlite("recording a health check"))?;
            Ok(())
        })
        .await
    }

    /// Deletes an integration and cancels its queued jobs, in one transaction. Returns the
    /// deleted record and the number of cancelled jobs, or `None` when there is no such
    /// integration. Running jobs are left to the caller, which cancels them.
    ///
    /// # Errors
    ///
    /// Database and decryption failures.
    pub async fn delete_integration(
        &self,
        agent_id: Uuid,
    ) -> Result<Option<(IntegrationRecord, usize)>, StoreError> {
        self.call(move |connection, codecs| {
            let transaction = connection
                .transaction()
                .map_err(StoreError::sqlite("deleting an integration"))?;
            let Some(record) = get(&transaction, codecs, &agent_id)? else {
                return Ok(None);
            };
            transaction
                .execute(
                    "DELETE FROM integrations WHERE agent_id = ?1",
                    [agent_id.to_string()],
                )
                .map_err(StoreError::sqlite("deleting an integration"))?;
            let cancelled = transaction
                .execute(
                    "UPDATE jobs SET state = 'cancelled', finished_ms = ?2, \
                     error = 'the integration was deleted before the job started' \
                     WHERE agent_id = ?1 AND state = 'queued'",
                    params![agent_id.to_string(), now_ms()],
                )
                .map_err(StoreError::sqlite("deleting an integration"))?;
            transaction
                .commit()
                .map_err(StoreError::sqlite("deleting an integration"))?;
            codecs.manifests.forget(agent_id);
            Ok(Some((record, cancelled)))
        })
        .await
    }
}
