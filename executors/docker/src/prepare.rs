//! Turning a package into an image, and removing it again.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use agentrun_executor::{
    build_context_tar, check_dockerfile, image_tag, ExecutorError, PackageSpec, Prepared, Target,
    LABEL_AGENT_ID, LABEL_DIGEST, LABEL_ENGINE, LABEL_INTEGRATION,
};
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{BuildImageOptions, BuilderVersion, RemoveImageOptions};
use futures_util::StreamExt;
use tracing::{debug, Instrument};

use crate::connect::status_code;
use crate::{DockerExecutor, EXECUTOR};

/// Number of trailing build log lines kept for [`ExecutorError::BuildFailed`].
const BUILD_LOG_TAIL_LINES: usize = 20;

/// Builds the package's image unless an image with its tag exists. See
/// [`Executor::prepare`](agentrun_executor::Executor::prepare).
pub(crate) async fn prepare(
    executor: &DockerExecutor,
    package: &PackageSpec,
) -> Result<Prepared, ExecutorError> {
    let tag = image_tag(&package.integration, &package.agent_id, &package.digest);
    let span = tracing::info_span!(
        "prepare",
        executor = EXECUTOR,
        agent_id = %package.agent_id,
        image = %tag,
    );
    async {
        // The same rule on every backend: a package whose Dockerfile names no agent is invalid
        // before anything is built.
        let root = package.root.clone();
        tokio::task::spawn_blocking(move || check_dockerfile(&root))
            .await
            .map_err(|error| ExecutorError::Runtime {
                executor: EXECUTOR,
                operation: "check Dockerfile",
                message: error.to_string(),
            })??;

        // The tag derives from the package digest, so an existing image is this package's image.
        if image_exists(executor, &tag).await? {
            debug!("image exists, build skipped");
            return Ok(prepared(package, tag, true));
        }

        // A concurrent prepare of the same package may be building it: wait for it, then look
        // again, so that the package is built once.
        let lock = executor.build_lock(&tag);
        let _build = lock.lock().await;
        if image_exists(executor, &tag).await? {
            debug!("image built by a concurrent prepare");
            return Ok(prepared(package, tag, true));
        }

        build(executor, package, &tag).await?;
        Ok(prepared(package, tag, false))
    }
    .instrument(span)
    .await
}

/// Removes the image of a prepared package. An image that is gone or still used by a container
/// is left as it is.
pub(crate) async fn release(
    executor: &DockerExecutor,
    prepared: &Prepared,
) -> Result<(), ExecutorError> {
    let Target::Image { reference } = &prepared.target else {
        return Ok(());
    };
    let options = RemoveImageOptions {
        force: false,
        noprune: false,
        platforms: None,
    };
    match executor
        .docker
        .remove_image(reference, Some(options), None)
        .await
    {
        Ok(_) => {
            debug!(executor = EXECUTOR, agent_id = %prepared.agent_id, image = %reference, "image removed");
            Ok(())
        }
        Err(error) if matches!(status_code(&error), Some(404 | 409)) => {
            debug!(
                executor = EXECUTOR,
                agent_id = %prepared.agent_id,
                image = %reference,
                status = status_code(&error),
                "image not removed: missing or in use"
            );
            Ok(())
        }
        Err(error) => Err(executor.engine_error("remove image", error)),
    }
}

fn prepared(package: &PackageSpec, reference: String, cache_hit: bool) -> Prepared {
    Prepared {
        executor: EXECUTOR.to_owned(),
        integration: package.integration.clone(),
        agent_id: package.agent_id.clone(),
        digest: package.digest.clone(),
        target: Target::Image { reference },
        cache_hit,
    }
}

async fn image_exists(executor: &DockerExecutor, tag: &str) -> Result<bool, ExecutorError> {
    match executor.docker.inspect_image(tag).await {
        Ok(_) => Ok(true),
        Err(error) if status_code(&error) == Some(404) => Ok(false),
        Err(error) => Err(executor.engine_error("inspect image", error)),
    }
}

/// Sends the package folder as a tar build context to the build endpoint and follows its log.
async fn build(
    executor: &DockerExecutor,
    package: &PackageSpec,
    tag: &str,
) -> Result<(), ExecutorError> {
    let started = Instant::now();

    // Reading the package is file I/O, so it runs off the async worker threads.
    let root = package.root.clone();
    let context = tokio::task::spawn_blocking(move || build_context_tar(&root))
        .await
        .map_err(|error| ExecutorError::Runtime {
            executor: EXECUTOR,
            operation: "read build context",
            message: error.to_string(),
        })?
        .map_err(|error| {
            ExecutorError::io(
                format!("reading build context {}", package.root.display()),
                error,
            )
        })?;
    debug!(context_bytes = context.len(), "build started");

    let labels = HashMap::from([
        (LABEL_ENGINE.to_owned(), executor.config.instance.clone()),
        (LABEL_AGENT_ID.to_owned(), package.agent_id.clone()),
        (LABEL_INTEGRATION.to_owned(), package.integration.clone()),
        (LABEL_DIGEST.to_owned(), package.digest.clone()),
    ]);
    let options = BuildImageOptions {
        t: Some(tag.to_owned()),
        rm: true,
        forcerm: true,
        labels: Some(labels),
        // The legacy builder takes a plain tar context and names each step in its log.
        version: BuilderVersion::BuilderV1,
        ..BuildImageOptions::default()
    };
    let body = bollard::body_full(bytes::Bytes::from(context));
    let mut stream = executor.docker.build_image(options, None, Some(body));

    // Follow the log until the stream ends or reports an error.
    let mut log = BuildLog::default();
    let timeout = executor.config.build_timeout();
    let followed = tokio::time::timeout(timeout, async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream {
                        log.push(&text);
                    }
                }
                Err(BollardError::DockerStreamError { error }) => {
                    log.finish();
                    return Err(log.failure(tag, error));
                }
                Err(error) => return Err(executor.engine_error("build image", error)),
            }
        }
        log.finish();
        Ok(())
    })
    .await;
    match followed {
        Ok(result) => result?,
        Err(_) => {
            log.finish();
            return Err(log.failure(
                tag,
                format!(
                    "the build timed out after {} s: raise `build_timeout_secs` in the Docker configuration",
                    timeout.as_secs()
                ),
            ));
        }
    }

    // A stream that ends without an error but also without an image means the build was cut
    // off, for example because the engine stopped.
    if !image_exists(executor, tag).await? {
        return Err(log.failure(
            tag,
            "the build log ended but the image does not exist".to_owned(),
        ));
    }
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "image built"
    );
    Ok(())
}

/// The part of a build log kept for errors: the last step started and the last lines.
#[derive(Debug, Default)]
struct BuildLog {
    /// Text after the last newline, waiting for the rest of its line.
    partial: String,
    tail: VecDeque<String>,
    /// The last `Step N/M : INSTRUCTION` line of the legacy builder.
    step: Option<String>,
}

impl BuildLog {
    /// Adds a piece of the build log. Pieces may hold several lines or part of one.
    fn push(&mut self, text: &str) {
        self.partial.push_str(text);
        while let Some(newline) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=newline).collect();
            self.line(line.trim_end());
        }
    }

    /// Treats the text after the last newline as a line of its own.
    fn finish(&mut self) {
        let rest = std::mem::take(&mut self.partial);
        self.line(rest.trim_end());
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            return;
        }
        debug!(line, "build log");
        if line.starts_with("Step ") && line.contains(" : ") {
            self.step = Some(line.to_owned());
        }
        if self.tail.len() == BUILD_LOG_TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_owned());
    }

    fn failure(&self, tag: &str, message: String) -> ExecutorError {
        ExecutorError::BuildFailed {
            image: tag.to_owned(),
            step: self.step.clone(),
            message: message.trim_end().to_owned(),
            log_tail: Vec::from(self.tail.clone()).join("\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_log_joins_split_lines_and_tracks_step() {
        let mut log = BuildLog::default();
        log.push("Step 1/2 : FROM agentrun-busybox:latest\n ---> c2da");
        log.push("7615e796\nStep 2/2 : RUN exit 7\n");
        log.push(" ---> Running in 8583e6583f42");
        log.finish();

        assert_eq!(log.step.as_deref(), Some("Step 2/2 : RUN exit 7"));
        assert_eq!(
            Vec::from(log.tail.clone()),
            [
                "Step 1/2 : FROM agentrun-busybox:latest",
                " ---> c2da7615e796",
                "Step 2/2 : RUN exit 7",
                " ---> Running in 8583e6583f42",
            ]
        );
    }

    #[test]
    fn build_log_keeps_last_lines() {
        let mut log = BuildLog::default();
        for number in 0..25 {
            log.push(&format!("line {number}\n"));
        }
        assert_eq!(log.tail.len(), BUILD_LOG_TAIL_LINES);
        assert_eq!(log.tail.front().map(String::as_str), Some("line 5"));
        assert_eq!(log.tail.back().map(String::as_str), Some("line 24"));
    }

    #[test]
    fn build_failure_names_step_and_tail() {
        let mut log = BuildLog::default();
        log.push("Step 3/5 : RUN false\n ---> Running in abc\n");
        let error = log.failure("agentrun/x-1:2", "returned a non-zero code: 1\n".to_owned());
        match error {
            ExecutorError::BuildFailed {
                image,
                step,
                message,
                log_tail,
            } => {
                assert_eq!(image, "agentrun/x-1:2");
                assert_eq!(step.as_deref(), Some("Step 3/5 : RUN false"));
                assert_eq!(message, "returned a non-zero code: 1");
                assert_eq!(log_tail, "Step 3/5 : RUN false\n ---> Running in abc");
            }
            other => panic!("expected a build failure, got {other:?}"),
        }
    }
}
