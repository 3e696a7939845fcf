//! Registering, replacing and deleting integrations, and building their packages.
//!
//! Packages live in `<data_dir>/packages/<agent_id>/<digest>/`. An upload is unpacked with
//! [`package::open_into`] into a hidden folder beside them, and renamed into place once the
//! manifest is known, so a rejected upload never leaves a partial package behind. Changes to
//! integrations run one at a time under [`Service::integration_lock`], because two uploads for
//! one name would otherwise race for the same folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentrun_executor::Prepared;
use axum::http::StatusCode;
use uuid::Uuid;

use super::api::error::{ApiError, FieldError};
use super::pool::CancelReason;
use super::{health, Service};
use crate::dispatcher::Integration;
use crate::error::error_chain;
use crate::manifest::{Manifest, ManifestError, MANIFEST_FILE, MAX_MANIFEST_BYTES};
use crate::package::{self, PackageError};
use crate::protocol::agent_id_for;
use crate::store::{BuildState, IntegrationRecord, NewIntegration};

/// Prefix of folders that hold an upload being unpacked.
const INCOMING_PREFIX: &str = ".incoming-";

/// An uploaded package and the optional manifest part.
#[derive(Debug)]
pub(crate) struct Upload {
    /// The `manifest` part: JSON with the keys of `integration.toml`.
    pub(crate) manifest: Option<Vec<u8>>,
    /// The `package` part, written to a file in the data folder's `tmp/`.
    pub(crate) package: tempfile::TempPath,
}

/// A package unpacked into its incoming folder.
struct Unpacked {
    root: PathBuf,
    digest: String,
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        // Removes the incoming folder unless it was moved into place.
        if self.root.exists() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Builds the dispatcher's view of a stored integration.
pub(crate) fn to_integration(record: &IntegrationRecord) -> Integration {
    let mut integration = Integration::new(
        record.manifest.clone(),
        record.package_root.clone(),
        record.digest.clone(),
    );
    integration.env = record.env.clone();
    integration
}

/// Registers a new integration and starts building it.
///
/// The upload is unpacked and its manifest validated before [`Service::integration_lock`] is
/// taken, on blocking threads: compiling a manifest's regexes can take a while, and neither
/// step touches anything that another request uses.
pub(crate) async fn register(
    service: &Arc<Service>,
    upload: Upload,
) -> Result<IntegrationRecord, ApiError> {
    let unpacked = unpack(service, &upload.package).await?;
    let Some(manifest) = parse_manifest(upload.manifest, &unpacked.root).await? else {
        return Err(missing_manifest());
    };
    let agent_id = agent_id_for(&manifest.name);

    let _guard = service.integration_lock.lock().await;
    if let Some(existing) = service.store.integration(agent_id).await? {
        return Err(duplicate(&existing.name));
    }
    let root = place(service, agent_id, &unpacked)?;
    let record = service
        .store
        .insert_integration(NewIntegration {
            agent_id,
            manifest,
            digest: unpacked.digest.clone(),
            package_root: root.clone(),
        })
        .await
        .inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&root);
        })?;
    tracing::info!(agent_id = %agent_id, name = %record.name, digest = %record.digest, "integration registered");
    spawn_build(service, record.clone(), None);
    Ok(record)
}

/// Replaces an integration's package (and manifest) and starts building it.
///
/// The manifest is the `manifest` part, else the package's `integration.toml`, else the current
/// manifest. Its name may differ from the current one in case only, since the agentID must stay.
/// As for [`register`], the upload is unpacked and validated before the lock is taken.
pub(crate) async fn replace(
    service: &Arc<Service>,
    agent_id: Uuid,
    upload: Upload,
) -> Result<IntegrationRecord, ApiError> {
    if service.store.integration(agent_id).await?.is_none() {
        return Err(ApiError::not_found("integration", agent_id));
    }
    let unpacked = unpack(service, &upload.package).await?;
    let parsed = parse_manifest(upload.manifest, &unpacked.root).await?;

    let _guard = service.integration_lock.lock().await;
    let Some(current) = service.store.integration(agent_id).await? else {
        return Err(ApiError::not_found("integration", agent_id));
    };
    let manifest = parsed.unwrap_or_else(|| {
        let mut manifest = current.manifest.clone();
        manifest.env.clear();
        manifest
    });
    if agent_id_for(&manifest.name) != agent_id {
        return Err(ApiError::unprocessable(
            "name_changed",
            format!(
                "the new manifest names the integration {:?}, but this integration is {:?}; a \
                 replacement keeps the name (case may differ), so register a new integration \
                 instead",
                manifest.name, current.name
            ),
            vec![FieldError {
                field: "name".to_owned(),
                message: format!("must be {:?}, ignoring case", current.name),
                rule: None,
            }],
        ));
    }

    let root = place(service, agent_id, &unpacked)?;
    let previous = service
        .store
        .replace_package(agent_id, manifest, unpacked.digest.clone(), root)
        .await?
        .ok_or_else(|| ApiError::not_found("integration", agent_id))?;
    let record = service
        .store
        .integration(agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found("integration", agent_id))?;
    tracing::info!(
        agent_id = %agent_id,
        digest = %record.digest,
        previous_digest = %previous.digest,
        "integration package replaced"
    );
    spawn_build(service, record.clone(), previous.prepared);
    Ok(record)
}

/// Deletes an integration: cancels its queued and running jobs, and once they have ended
/// frees its image and removes its package folder, unless a new integration of the same name
/// uses them by then.
pub(crate) async fn delete(
    service: &Arc<Service>,
    agent_id: Uuid,
) -> Result<IntegrationRecord, ApiError> {
    let _guard = service.integration_lock.lock().await;
    let Some((record, cancelled_queued)) = service.store.delete_integration(agent_id).await? else {
        return Err(ApiError::not_found("integration", agent_id));
    };
    let running = service
        .pool
        .cancel_integration(agent_id, CancelReason::IntegrationDeleted);
    tracing::info!(
        agent_id = %agent_id,
        name = %record.name,
        cancelled_queued,
        cancelled_running = running.len(),
        "integration deleted"
    );

    let service_for_cleanup = Arc::clone(service);
    let deleted = record.clone();
    service.tasks.spawn(async move {
        let service = service_for_cleanup;
        let grace = std::time::Duration::from_secs(service.config.shutdown_grace_secs.max(10));
        if !service.pool.wait_ended(&running, grace).await {
            tracing::warn!(agent_id = %agent_id, "jobs of the deleted integration are still running; its files stay until the next start");
            return;
        }
        remove_deleted_files(&service, &deleted).await;
    });
    Ok(record)
}

/// Frees a deleted integration's image and removes its package folders.
///
/// Runs under [`Service::integration_lock`], like registration: the agentID derives from the
/// name, so an integration registered again under the same name uses the same package folder
/// and, for the same package, the same image. That integration's folder is kept, and so is the
/// image when it has the deleted one's digest.
async fn remove_deleted_files(service: &Service, deleted: &IntegrationRecord) {
    let _guard = service.integration_lock.lock().await;
    let agent_id = deleted.agent_id;
    let successor = match service.store.integration(agent_id).await {
        Ok(successor) => successor,
        Err(error) => {
            tracing::warn!(agent_id = %agent_id, error = %error, "reading the integrations failed; the deleted integration's files stay until the next start");
            return;
        }
    };

    let image_in_use = successor
        .as_ref()
        .is_some_and(|successor| successor.digest == deleted.digest);
    if image_in_use {
        tracing::info!(agent_id = %agent_id, digest = %deleted.digest, "the deleted integration's package is registered again; its image and folder are kept");
    } else if let Some(prepared) = &deleted.prepared {
        if let Err(error) = service.executor().release(prepared).await {
            tracing::warn!(agent_id = %agent_id, error = %error, "freeing the deleted integration's image failed");
        }
    }

    // Every package folder of the agentID belonged to the deleted integration, replaced ones
    // included, except the one of a new integration of the same name.
    let folder = service.config.packages_dir().join(agent_id.to_string());
    let keep = successor.map(|successor| successor.package_root);
    let target = folder.clone();
    let removed =
        tokio::task::spawn_blocking(move || remove_agent_folder(&target, keep.as_deref()))
            .await
            .unwrap_or_else(|error| Err(std::io::Error::other(error)));
    match removed {
        Ok(()) => {
            tracing::info!(agent_id = %agent_id, "the deleted integration's package folders are removed")
        }
        Err(error) => {
            tracing::warn!(folder = %folder.display(), error = %error, "removing the deleted integration's package failed")
        }
    }
}

/// Removes package folders that no integration uses, such as uploads a previous process did
/// not finish and packages that were replaced or deleted. Runs at start-up before the API
/// accepts uploads, since a folder being uploaded is not in the store yet.
pub(crate) async fn remove_unused_packages(service: &Service) {
    let records = match service.store.integrations().await {
        Ok(records) => records,
        Err(error) => {
            tracing::error!(error = %error, "listing integrations at start-up failed; no package is removed");
            return;
        }
    };
    let packages = service.config.packages_dir();
    let keep: Vec<PathBuf> = records
        .iter()
        .map(|record| record.package_root.clone())
        .collect();
    let folder = packages.clone();
    let removed = tokio::task::spawn_blocking(move || remove_folders_except(&folder, &keep)).await;
    if let Ok(Err(error)) = removed {
        tracing::warn!(folder = %packages.display(), error = %error, "removing unused packages failed");
    }
}

/// Restarts builds that a previous process left unfinished. Runs at start-up.
pub(crate) async fn resume_builds(service: &Arc<Service>) {
    let records = match service.store.integrations().await {
        Ok(records) => records,
        Err(error) => {
            tracing::error!(error = %error, "listing integrations at start-up failed");
            return;
        }
    };
    for record in records {
        if record.state == BuildState::Building {
            spawn_build(service, record, None);
        }
    }
}

/// Prepares a package on the executor in the background and records the outcome. When
/// `previous` is the replaced package's result, its image is freed once the new one is ready.
fn spawn_build(service: &Arc<Service>, record: IntegrationRecord, previous: Option<Prepared>) {
    let service = Arc::clone(service);
    let span = tracing::info_span!("build", agent_id = %record.agent_id, digest = %record.digest);
    service.tasks.clone().spawn(tracing::Instrument::instrument(
        async move {
            let started = std::time::Instant::now();
            let integration = to_integration(&record);
            let outcome = service.dispatcher.prepare(&integration).await;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            // The log keeps the server's paths; the stored error, which API clients read,
            // names files relative to the package.
            let outcome = match outcome {
                Ok(prepared) => {
                    tracing::info!(elapsed_ms, cache_hit = prepared.cache_hit, "package ready");
                    Ok(prepared)
                }
                Err(error) => {
                    let text = error_chain(&error);
                    tracing::warn!(elapsed_ms, error = %text, "package build failed");
                    Err(build_error_text(&error, &text, &record.package_root))
                }
            };
            let build_error = outcome.as_ref().err().cloned();
            let current = match service
                .store
                .finish_build(record.agent_id, record.digest.clone(), outcome)
                .await
            {
                Ok(current) => current,
                Err(error) => {
                    tracing::error!(error = %error, "recording the build failed");
                    return;
                }
            };
            if !current {
                return;
            }
            if let Some(error) = build_error {
                fail_waiting_jobs(&service, record.agent_id, &error).await;
                return;
            }
            service.pool.wake();
            if let Some(previous) = previous.filter(|previous| previous.digest != record.digest) {
                if let Err(error) = service.executor().release(&previous).await {
                    tracing::warn!(error = %error, "freeing the replaced package's image failed");
                }
            }
            health::check_now(&service, record.agent_id).await;
        },
        span,
    ));
}

/// Returns a build error for API clients: the error and its causes, with paths relative to
/// the package instead of the folder the service unpacked it into.
fn build_error_text(error: &crate::error::Error, text: &str, root: &Path) -> String {
    use agentrun_executor::ExecutorError;

    let text = match error {
        crate::error::Error::Executor(ExecutorError::InvalidPackage { reason, .. }) => {
            format!("invalid package: {reason}")
        }
        _ => text.to_owned(),
    };
    // Backends may name the folder by its canonical path, which differs when the data folder's
    // path contains a symbolic link.
    let mut roots = vec![root.display().to_string()];
    if let Ok(canonical) = std::fs::canonicalize(root) {
        roots.push(canonical.display().to_string());
    }
    roots.iter().fold(text, |text, root| {
        text.replace(&format!("{root}/"), "")
            .replace(root.as_str(), "<package>")
    })
}

/// Ends the jobs that were queued for a package whose build failed, since they could only run
/// after a successful replacement of the package.
async fn fail_waiting_jobs(service: &Service, agent_id: Uuid, build_error: &str) {
    let message =
        format!("the integration's package build failed, so the job cannot run: {build_error}");
    match service.store.fail_queued_jobs(agent_id, message).await {
        Ok(ids) => {
            if !ids.is_empty() {
                tracing::warn!(agent_id = %agent_id, jobs = ids.len(), "queued jobs failed with the build");
            }
            for id in ids {
                service.events.send_finished(id);
            }
        }
        Err(error) => {
            tracing::error!(agent_id = %agent_id, error = %error, "failing the queued jobs of a failed build failed");
        }
    }
}

/// Unpacks an uploaded zip into a new incoming folder under `packages/`.
async fn unpack(service: &Service, zip: &Path) -> Result<Unpacked, ApiError> {
    let incoming = service
        .config
        .packages_dir()
        .join(format!("{INCOMING_PREFIX}{}", Uuid::new_v4()));
    let limits = service.config.intake.clone();
    let upload_path = zip.display().to_string();
    let incoming_path = format!("{}/", incoming.display());
    let zip = zip.to_owned();
    let destination = incoming.clone();
    let opened =
        tokio::task::spawn_blocking(move || package::open_into(&zip, &destination, &limits))
            .await
            .map_err(|error| ApiError::internal(&error))?;
    match opened {
        Ok(package) => Ok(Unpacked {
            root: incoming,
            digest: package.digest().to_owned(),
        }),
        Err(error @ PackageError::ArchiveTooLarge { .. }) => {
            Err(ApiError::too_large(error.to_string()))
        }
        Err(error) if error.is_invalid_input() => {
            // The paths of the upload and of its folder are the service's own business, so
            // the client sees the part's name and the path inside the package instead.
            let message = match &error {
                // An upload is always a file, so the command line's advice to pass a folder
                // does not apply.
                PackageError::NotAPackage { found, .. } => format!(
                    "the package part is {found}, not a zip archive: upload a .zip whose top \
                     level, or single top-level folder, holds a Dockerfile"
                ),
                _ => error
                    .to_string()
                    .replace(&upload_path, "the package part")
                    .replace(&incoming_path, ""),
            };
            Err(ApiError::unprocessable(
                "invalid_package",
                message.clone(),
                vec![FieldError {
                    field: "package".to_owned(),
                    message,
                    rule: None,
                }],
            ))
        }
        Err(error) => Err(ApiError::internal(&error)),
    }
}

/// Validates the upload's manifest on a blocking thread: the `manifest` part, else the
/// package's `integration.toml`. Returns `None` when there is neither.
///
/// NOTE: `[env]` values from a package's own `integration.toml` are stored encrypted like all
/// env values, but the file itself stays in the unpacked package (and in an image whose
/// Dockerfile copies it). Send secrets in the `manifest` part or with `PATCH …/env` instead.
async fn parse_manifest(part: Option<Vec<u8>>, root: &Path) -> Result<Option<Manifest>, ApiError> {
    let root = root.to_owned();
    tokio::task::spawn_blocking(move || match part {
        Some(json) => Manifest::from_json_slice(&json)
            .map(Some)
            .map_err(|error| manifest_part_error(error, &json)),
        None => read_package_manifest(&root),
    })
    .await
    .map_err(|error| ApiError::internal(&error))?
}

/// Turns an invalid `manifest` part into a 422, with a hint when the part looks like TOML.
fn manifest_part_error(error: ManifestError, json: &[u8]) -> ApiError {
    let looks_like_toml = matches!(error, ManifestError::Syntax { format: "JSON", .. })
        && json
            .iter()
            .find(|byte| !byte.is_ascii_whitespace())
            .is_some_and(|first| !matches!(first, b'{' | b'[' | b'"'));
    let mut api_error = ApiError::from(error);
    if looks_like_toml {
        let hint = format!(
            "; the `manifest` part takes JSON with the keys of {MANIFEST_FILE}, such as \
             {{\"name\": \"Slack\"}}: send TOML as {MANIFEST_FILE} inside the package instead"
        );
        api_error.message.push_str(&hint);
        for field in &mut api_error.errors {
            field.message.push_str(&hint);
        }
    }
    api_error
}

/// Reads `integration.toml` of an unpacked package, or returns `None` when there is none.
///
/// Errors name the file as `integration.toml`, relative to the package, because the client
/// knows the package and not the folder the service unpacked it into.
fn read_package_manifest(root: &Path) -> Result<Option<Manifest>, ApiError> {
    let path = root.join(MANIFEST_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let invalid = |message: String| {
        ApiError::unprocessable(
            "invalid_manifest",
            message.clone(),
            vec![FieldError {
                field: "manifest".to_owned(),
                message,
                rule: None,
            }],
        )
    };
    let size = std::fs::metadata(&path)
        .map_err(|error| ApiError::internal(&error))?
        .len();
    if size > MAX_MANIFEST_BYTES {
        return Err(invalid(format!(
            "{MANIFEST_FILE} is {size} bytes; the maximum is {MAX_MANIFEST_BYTES}"
        )));
    }
    let bytes = std::fs::read(&path).map_err(|error| ApiError::internal(&error))?;
    let text = String::from_utf8(bytes).map_err(|error| {
        invalid(format!(
            "{MANIFEST_FILE} is not UTF-8 text: invalid byte at offset {}; save it as UTF-8",
            error.utf8_error().valid_up_to()
        ))
    })?;
    Ok(Some(Manifest::from_toml_str(&text)?))
}

/// 422 for a registration with neither a `manifest` part nor an `integration.toml`.
fn missing_manifest() -> ApiError {
    let message = format!(
        "missing part `manifest`: the request has no `manifest` part and the package has no \
         {MANIFEST_FILE}; send the manifest as a JSON part named `manifest`, or add \
         {MANIFEST_FILE} to the package"
    );
    ApiError::unprocessable(
        "missing_part",
        message.clone(),
        vec![FieldError {
            field: "manifest".to_owned(),
            message,
            rule: None,
        }],
    )
}

/// Moves an unpacked package to `packages/<agent_id>/<digest>` and returns that path. An
/// existing folder with the same digest contains the same files, so it is kept.
fn place(service: &Service, agent_id: Uuid, unpacked: &Unpacked) -> Result<PathBuf, ApiError> {
    let parent = service.config.packages_dir().join(agent_id.to_string());
    let destination = parent.join(&unpacked.digest);
    if destination.exists() {
        return Ok(destination);
    }
    std::fs::create_dir_all(&parent).map_err(|error| ApiError::internal(&error))?;
    std::fs::rename(&unpacked.root, &destination).map_err(|error| ApiError::internal(&error))?;
    Ok(destination)
}

fn duplicate(existing: &str) -> ApiError {
    let message = format!(
        "an integration named {existing:?} exists; names are compared case-insensitively, so \
         choose another name or replace that integration's package"
    );
    ApiError::new(StatusCode::CONFLICT, "duplicate_name", message)
}

/// Removes entries under `packages/` that are neither in `keep` nor a parent of one.
fn remove_folders_except(packages: &Path, keep: &[PathBuf]) -> std::io::Result<()> {
    for agent in std::fs::read_dir(packages)? {
        let agent = agent?.path();
        if !keep.iter().any(|root| root.starts_with(&agent)) {
            if agent.is_dir() {
                std::fs::remove_dir_all(&agent)?;
            } else {
                std::fs::remove_file(&agent)?;
            }
            continue;
        }
        if !agent.is_dir() {
            continue;
        }
        for version in std::fs::read_dir(&agent)? {
            let version = version?.path();
            if !keep.contains(&version) {
                std::fs::remove_dir_all(&version)?;
            }
        }
    }
    Ok(())
}

/// Removes an agentID's package folder, or with `keep`, every version in it except `keep`.
fn remove_agent_folder(folder: &Path, keep: Option<&Path>) -> std::io::Result<()> {
    let Some(keep) = keep else {
        return match std::fs::remove_dir_all(folder) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            result => result,
        };
    };
    for version in std::fs::read_dir(folder)? {
        let version = version?.path();
        if version != keep {
            std::fs::remove_dir_all(&version)?;
        }
    }
    Ok(())
}

/// Returns 409 when the integration cannot take jobs.
pub(crate) fn check_accepts_jobs(record: &IntegrationRecord) -> Result<(), ApiError> {
    if record.state == BuildState::Failed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "integration_failed",
            format!(
                "integration {:?} cannot run jobs because its package build failed: {}; replace \
                 the package",
                record.name,
                record.build_error.as_deref().unwrap_or("unknown error")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use agentrun_executor::ExecutorError;

    use super::*;
    use crate::error::Error;

    /// Build errors keep their OS cause and name files relative to the package.
    #[test]
    fn build_error_text_is_package_relative() {
        let root = PathBuf::from("/srv/agentrun/packages/abc/0123");
        let error = Error::Executor(ExecutorError::io(
            format!("resolve package folder {}", root.display()),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
        let text = build_error_text(&error, &error_chain(&error), &root);
        assert_eq!(
            text,
            "resolve package folder <package> failed: entity not found"
        );

        let error = Error::Executor(ExecutorError::InvalidPackage {
            path: root.clone(),
            reason: format!("{}/agent.sh is not executable", root.display()),
        });
        let text = build_error_text(&error, &error_chain(&error), &root);
        assert_eq!(text, "invalid package: agent.sh is not executable");
    }
}
