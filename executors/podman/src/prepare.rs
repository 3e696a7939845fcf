//! Turning a package into an image, and removing it again.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use agentrun_executor::{
    build_context_tar, check_dockerfile, image_tag, ExecutorError, PackageSpec, Prepared, Target,
    LABEL_AGENT_ID, LABEL_DIGEST, LABEL_ENGINE, LABEL_INTEGRATION,
};
use tracing::{debug, Instrument};

use crate::connect::{is_not_found, runtime_error, Connection};
use crate::libpod::{self, encode_query_value, CallError};
use crate::{PodmanExecutor, EXECUTOR};

/// Number of trailing build log lines kept for [`ExecutorError::BuildFailed`].
const BUILD_LOG_TAIL_LINES: usize = 20;

/// Builds the package's image unless an image with its tag exists. See
/// [`Executor::prepare`](agentrun_executor::Executor::prepare).
pub(crate) async fn prepare(
    executor: &PodmanExecutor,
    package: &PackageSpec,
) -> Result<Prepared, ExecutorError> {
    let tag = image_tag(&package.integration, &package.agent_id, &package.digest);
    let span = tracing::debug_span!(
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

        let connection = executor.connection().await?;

        // The tag derives from the package digest, so an existing image is this package's image.
        if image_exists(&connection, &tag).await? {
            debug!("image exists, build skipped");
            return Ok(prepared(package, tag, true));
        }

        // A concurrent prepare of the same package may be building it: wait for it, then look
        // again, so that the package is built once.
        let lock = executor.build_lock(&tag);
        let _build = lock.lock().await;
        if image_exists(&connection, &tag).await? {
            debug!("image built by a concurrent prepare");
            return Ok(prepared(package, tag, true));
        }

        build(executor, &connection, package, &tag).await?;
        Ok(prepared(package, tag, false))
    }
    .instrument(span)
    .await
}

/// Removes the image of a prepared package. An image that is gone or still used by a container
/// is left as it is.
pub(crate) async fn release(
    executor: &PodmanExecutor,
    prepared: &Prepared,
) -> Result<(), ExecutorError> {
    let Target::Image { reference } = &prepared.target else {
        return Ok(());
    };
    let connection = executor.connection().await?;
    match connection.podman.images().get(reference).remove().await {
        Ok(()) => {
            debug!(executor = EXECUTOR, agent_id = %prepared.agent_id, image = %reference, "image removed");
            Ok(())
        }
        Err(error) if is_not_found(&error) || is_in_use(&error) => {
            debug!(
                executor = EXECUTOR,
                agent_id = %prepared.agent_id,
                image = %reference,
                %error,
                "image not removed: missing or in use"
            );
            Ok(())
        }
        Err(error) => Err(connection.api_error("remove image", error)),
    }
}

/// Returns true for Podman's "image is in use by a container" conflict (HTTP 409).
fn is_in_use(error: &podman_api::Error) -> bool {
    matches!(error, podman_api::Error::Fault { code, .. } if code.as_u16() == 409)
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

async fn image_exists(connection: &Connection, tag: &str) -> Result<bool, ExecutorError> {
    connection
        .podman
        .images()
        .get(tag)
        .exists()
        .await
        .map_err(|error| connection.api_error("inspect image", error))
}

/// Sends the package's tar build context to the libpod build endpoint and follows its log.
async fn build(
    executor: &PodmanExecutor,
    connection: &Connection,
    package: &PackageSpec,
    tag: &str,
) -> Result<(), ExecutorError> {
    let started = Instant::now();
    if !package.root.join("Dockerfile").is_file() {
        return Err(ExecutorError::InvalidPackage {
            path: package.root.clone(),
            reason: "the package has no Dockerfile at its top level".to_owned(),
        });
    }

    // Reading the package is file I/O, so it runs off the async worker threads.
    let root = package.root.clone();
    let context = tokio::task::spawn_blocking(move || build_context_tar(&root))
        .await
        .map_err(|error| runtime_error("read build context", error.to_string()))?
        .map_err(|error| {
            ExecutorError::io(
                format!("reading build context {}", package.root.display()),
                error,
            )
        })?;
    debug!(context_bytes = context.len(), "build started");

    let labels = BTreeMap::from([
        (LABEL_ENGINE, executor.config.instance.as_str()),
        (LABEL_AGENT_ID, package.agent_id.as_str()),
        (LABEL_INTEGRATION, package.integration.as_str()),
        (LABEL_DIGEST, package.digest.as_str()),
    ]);
    let labels = serde_json::to_string(&labels)
        .map_err(|error| runtime_error("build image", error.to_string()))?;
    let endpoint = format!(
        "/libpod/build?t={}&labels={}&rm=true&forcerm=true",
        encode_query_value(tag),
        encode_query_value(&labels),
    );

    // Follow the log until the stream ends or reports an error.
    let mut log = BuildLog::default();
    let timeout = executor.config.build_timeout();
    let followed = tokio::time::timeout(timeout, async {
        let mut response = libpod::request(
            &connection.socket,
            "POST",
            &endpoint,
            Some("application/x-tar"),
            &context,
        )
        .await
        .map_err(|error| connection.call_error("build image", CallError::Io(error)))?;
        if !response.is_success() {
            let message = response.error_message().await;
            return Err(log.failure(tag, message));
        }
        while let Some(line) = response
            .next_line()
            .await
            .map_err(|error| connection.call_error("build image", CallError::Io(error)))?
        {
            if let Some(error) = log.push_json_line(&line) {
                return Err(log.failure(tag, error));
            }
        }
        Ok(())
    })
    .await;
    match followed {
        Ok(result) => result?,
        Err(_) => {
            return Err(log.failure(
                tag,
                format!(
                    "the build took longer than {} s; raise `build_timeout_secs` in the Podman configuration",
                    timeout.as_secs()
                ),
            ));
        }
    }

    // A stream that ends without an error but also without an image means the build was cut
    // off, for example because the service stopped.
    if !image_exists(connection, tag).await? {
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

/// One line of the libpod build response.
#[derive(Debug, serde::Deserialize)]
struct BuildMessage {
    /// A piece of the build log.
    stream: Option<String>,
    /// The build's error, on the last line of a failed build.
    error: Option<String>,
}

/// The part of a build log kept for errors: the last step started and the last lines.
#[derive(Debug, Default)]
struct BuildLog {
    /// Text after the last newline, waiting for the rest of its line.
    partial: String,
    tail: VecDeque<String>,
    /// The instruction of the last `STEP N/M: INSTRUCTION` line.
    step: Option<String>,
}

impl BuildLog {
    /// Adds one JSON line of the build response. Returns the build's error message when the
    /// line reports one.
    fn push_json_line(&mut self, line: &str) -> Option<String> {
        if line.trim().is_empty() {
            return None;
        }
        match serde_json::from_str::<BuildMessage>(line) {
            Ok(BuildMessage {
                error: Some(error), ..
            }) => {
                self.finish();
                if let Some(step) = failed_step(&error) {
                    self.step = Some(step);
                }
                Some(error.trim_end().to_owned())
            }
            Ok(BuildMessage {
                stream: Some(text), ..
            }) => {
                self.push(&text);
                None
            }
            Ok(_) => None,
            // Keep a line that is not JSON as log text rather than failing the build on it.
            Err(_) => {
                self.push(line);
                self.push("\n");
                None
            }
        }
    }

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
        if let Some(step) = step_instruction(line) {
            self.step = Some(step.to_owned());
        }
        if self.tail.len() == BUILD_LOG_TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_owned());
    }

    fn failure(&mut self, tag: &str, message: String) -> ExecutorError {
        self.finish();
        ExecutorError::BuildFailed {
            image: tag.to_owned(),
            step: self.step.clone(),
            message: message.trim_end().to_owned(),
            log_tail: Vec::from(self.tail.clone()).join("\n"),
        }
    }
}

/// Returns the instruction of a Buildah step line, `STEP 2/4: RUN make` → `RUN make`.
fn step_instruction(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("STEP ")?;
    let (counter, instruction) = rest.split_once(": ")?;
    counter
        .split('/')
        .all(|number| !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()))
        .then_some(instruction)
}

/// Returns the instruction named in Buildah's error, `building at STEP "RUN exit 3": …` →
/// `RUN exit 3`.
fn failed_step(error: &str) -> Option<String> {
    let rest = error.split_once("building at STEP \"")?.1;
    let (step, _) = rest.split_once("\": ")?;
    Some(step.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_instruction_parses_buildah_lines() {
        assert_eq!(step_instruction("STEP 2/4: RUN make"), Some("RUN make"));
        assert_eq!(
            step_instruction("STEP 1/2: FROM agentrun-busybox:latest"),
            Some("FROM agentrun-busybox:latest")
        );
        assert_eq!(step_instruction("STEP x/4: RUN make"), None);
        assert_eq!(step_instruction("hello"), None);
    }

    #[test]
    fn failed_step_parses_error() {
        let error = "building at STEP \"RUN echo failing >&2; exit 3\": while running runtime: exit status 3\n";
        assert_eq!(
            failed_step(error).as_deref(),
            Some("RUN echo failing >&2; exit 3")
        );
        assert_eq!(failed_step("no such image"), None);
    }

    #[test]
    fn build_log_reads_stream_and_error_lines() {
        let mut log = BuildLog::default();
        let lines = [
            r#"{"stream":"STEP 1/3: FROM agentrun-busybox:latest\n"}"#,
            r#"{"stream":"STEP 2/3: RUN echo hi \u0026\u0026 exit 3\n"}"#,
            r#"{"stream":"hi"}"#,
            r#"{"stream":"\n"}"#,
            r#"{"errorDetail":{"message":"x"},"error":"building at STEP \"RUN echo hi \u0026\u0026 exit 3\": while running runtime: exit status 3\n"}"#,
        ];
        let mut error = None;
        for line in lines {
            error = log.push_json_line(line).or(error);
        }

        let error = error.expect("the last line reports an error");
        assert_eq!(
            error,
            "building at STEP \"RUN echo hi && exit 3\": while running runtime: exit status 3"
        );
        match log.failure("agentrun/x-1:2", error) {
            ExecutorError::BuildFailed {
                image,
                step,
                log_tail,
                ..
            } => {
                assert_eq!(image, "agentrun/x-1:2");
                assert_eq!(step.as_deref(), Some("RUN echo hi && exit 3"));
                assert_eq!(
                    log_tail,
                    "STEP 1/3: FROM agentrun-busybox:latest\nSTEP 2/3: RUN echo hi && exit 3\nhi"
                );
            }
            other => panic!("expected a build failure, got {other:?}"),
        }
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
    fn build_log_keeps_non_json_line_as_text() {
        let mut log = BuildLog::default();
        assert_eq!(log.push_json_line("not json"), None);
        log.finish();
        assert_eq!(Vec::from(log.tail.clone()), ["not json"]);
    }
}
