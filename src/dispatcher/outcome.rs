//! Turning what an agent did ([`JobOutcome`]) into a [`WorkResult`] or [`HealthReport`].

use std::time::Duration;

use agentrun_executor::{ExitStatus, JobEnd, JobOutcome};

use super::{HealthReport, JobStatus, WorkResult};
use crate::protocol::{parse_heartbeat, parse_info_reply, InfoReply, ReplyError};
use crate::warning::{Warning, WarningKind};

/// Maximum length of one quoted stderr line, in characters.
const MAX_STDERR_LINE_CHARS: usize = 300;

/// Builds the result of a `work` job from its outcome.
pub(super) fn work_result(
    job_id: u64,
    outcome: &JobOutcome,
    timeout: Duration,
    max_stdout_bytes: usize,
    stderr_tail_lines: usize,
) -> WorkResult {
    let mut result = WorkResult {
        job_id,
        status: JobStatus::Error,
        return_code: None,
        exit_code: outcome.exit.code(),
        message: None,
        url: None,
        url_label: None,
        duration_ms: millis(outcome.duration),
        reply: None,
        warnings: Vec::new(),
        error: None,
        stderr_tail: outcome.stderr_text().into_owned(),
    };

    let failure = match outcome.end {
        JobEnd::Exited => match parse_info_reply(&outcome.stdout, job_id) {
            Ok(reply) => {
                result.warnings = reply_warnings(&reply, outcome.exit);
                result.status = if reply.return_code == 0 {
                    JobStatus::Succeeded
                } else {
                    JobStatus::Failed
                };
                result.return_code = Some(reply.return_code);
                result.message = Some(reply.message);
                result.url = reply.url;
                result.url_label = reply.url_label;
                result.reply = Some(reply.raw);
                return result;
            }
            Err(error) => reply_failure(outcome.exit, &error),
        },
        end => {
            result.status = status_for_kill(end);
            let replied = parse_info_reply(&outcome.stdout, job_id).is_ok();
            kill_failure(
                end,
                outcome.exit,
                "info",
                replied,
                timeout,
                max_stdout_bytes,
            )
        }
    };
    result.error = Some(with_stderr(failure, outcome, stderr_tail_lines));
    result
}

/// Describes what an agent did wrong around a reply that was used: it replied more than once,
/// or it exited with a failure after replying.
fn reply_warnings(reply: &InfoReply, exit: ExitStatus) -> Vec<Warning> {
    let mut warnings = Vec::new();
    if reply.ignored_replies > 0 {
        // A reply with a job id was chosen for matching this job's; see `parse_info_reply`.
        let used = if reply.job_id.is_some() {
            "the last one with this job's id"
        } else {
            "the last one"
        };
        warnings.push(Warning::agent(
            WarningKind::RepeatedReply,
            format!(
                "the agent wrote {} \"info\" replies and only {used} was used: write one reply \
                 per job",
                reply.ignored_replies + 1
            ),
        ));
    }
    if !exit.success() {
        warnings.push(Warning::agent(
            WarningKind::ExitAfterReply,
            format!(
                "the agent {} after a valid reply, which was used: report a failure through the \
                 reply's return_code",
                exited(exit)
            ),
        ));
    }
    warnings
}

/// Builds the result of a health check from its outcome.
pub(super) fn health_report(
    job_id: u64,
    outcome: &JobOutcome,
    timeout: Duration,
    max_stdout_bytes: usize,
    stderr_tail_lines: usize,
) -> HealthReport {
    let mut report = HealthReport {
        healthy: false,
        job_id,
        status: JobStatus::Error,
        exit_code: outcome.exit.code(),
        reply: None,
        error: None,
        stderr_tail: outcome.stderr_text().into_owned(),
        duration_ms: millis(outcome.duration),
    };

    let failure = match outcome.end {
        JobEnd::Exited => match parse_heartbeat(&outcome.stdout, job_id) {
            Ok(heartbeat) => {
                report.healthy = true;
                report.status = JobStatus::Succeeded;
                report.reply = Some(heartbeat.raw);
                return report;
            }
            Err(error) => reply_failure(outcome.exit, &error),
        },
        end => {
            report.status = status_for_kill(end);
            let replied = parse_heartbeat(&outcome.stdout, job_id).is_ok();
            kill_failure(
                end,
                outcome.exit,
                "heartbeat",
                replied,
                timeout,
                max_stdout_bytes,
            )
        }
    };
    report.error = Some(with_stderr(failure, outcome, stderr_tail_lines));
    report
}

fn status_for_kill(end: JobEnd) -> JobStatus {
    match end {
        JobEnd::TimedOut => JobStatus::TimedOut,
        JobEnd::Cancelled => JobStatus::Cancelled,
        JobEnd::Exited | JobEnd::StdoutLimit => JobStatus::Error,
    }
}

/// Describes an agent that exited on its own without a valid reply.
fn reply_failure(exit: ExitStatus, error: &ReplyError) -> String {
    match error {
        ReplyError::NoReply { .. } => format!("agent {} without a reply: {error}", exited(exit)),
        ReplyError::Truncated { .. } => {
            format!("agent {} without a complete reply: {error}", exited(exit))
        }
        _ => format!("agent {} with an invalid reply: {error}", exited(exit)),
    }
}

/// Describes an agent that the executor killed. `replied` is true when stdout contained a valid
/// reply before the kill, which is not used because the agent did not exit.
fn kill_failure(
    end: JobEnd,
    exit: ExitStatus,
    expected_type: &str,
    replied: bool,
    timeout: Duration,
    max_stdout_bytes: usize,
) -> String {
    let expected = format!("expected one JSON object with \"type\":\"{expected_type}\" on stdout");
    match end {
        JobEnd::TimedOut if replied => format!(
            "agent wrote a reply but did not exit within {} and was killed ({exit}), so the \
             reply was not used: exit after writing the reply",
            format_duration(timeout)
        ),
        JobEnd::TimedOut => format!(
            "agent did not finish within {} and was killed ({exit}): {expected}",
            format_duration(timeout)
        ),
        JobEnd::Cancelled => {
            format!("job was cancelled and the agent was killed ({exit}) before it finished")
        }
        JobEnd::StdoutLimit => format!(
            "agent was killed ({exit}) after writing more than {max_stdout_bytes} bytes to \
             stdout: {expected}, and logs belong on stderr"
        ),
        // Not reached: callers handle agents that exited on their own.
        JobEnd::Exited => format!("agent {}: {expected}", exited(exit)),
    }
}

/// Returns "exited with exit code 2", "was killed by signal 9" and the like.
fn exited(exit: ExitStatus) -> String {
    match exit {
        ExitStatus::Code(code) => format!("exited with exit code {code}"),
        ExitStatus::Signal(signal) => format!("was killed by signal {signal}"),
        ExitStatus::Unknown => "ended with an unknown exit status".to_owned(),
    }
}

/// Appends the last `lines` lines of the agent's stderr to `text`.
fn with_stderr(mut text: String, outcome: &JobOutcome, lines: usize) -> String {
    let stderr = outcome.stderr_text();
    let all: Vec<&str> = stderr.lines().collect();
    let last = &all[all.len().saturating_sub(lines)..];
    if last.iter().all(|line| line.trim().is_empty()) {
        text.push_str("\nstderr was empty");
        return text;
    }

    text.push_str("\nlast stderr lines:");
    for line in last {
        text.push_str("\n  ");
        match line.char_indices().nth(MAX_STDERR_LINE_CHARS) {
            Some((cut, _)) => {
                text.push_str(&line[..cut]);
                text.push('…');
            }
            None => text.push_str(line),
        }
    }
    text
}

fn format_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
