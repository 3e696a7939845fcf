//! `testagent`: a stand-in agent for agentrun's tests, whose behaviour each test case selects.
//!
//! It speaks the agent protocol: it reads one JSON message on stdin and writes its reply on
//! stdout. A `describe` message gets `{"type":"heartbeat"}` and a `work` message gets an `info`
//! reply with the same `job_id` and `agent`. It uses only the standard library and
//! `serde_json`, and the test helper links it statically, so the same binary runs as a
//! subprocess and in a `FROM scratch` image.
//!
//! # Choosing a case
//!
//! The case is the environment variable `TESTAGENT_CASE`, else the value of the work payload
//! field named `case`, else `echo`. Cases that never read stdin (`no-stdin`) or that must read
//! it to the end (`read-eof`) only work from the environment variable, since the payload is
//! read from stdin. For a `describe` message each case behaves the same, except that its reply
//! (when it gives one) is a heartbeat shaped the way the case shapes replies.
//!
//! # Cases
//!
//! | case | behaviour |
//! | --- | --- |
//! | `echo` | replies with `message` = the payload's `message` value |
//! | `logs` | prints log lines on stdout before and after the `echo` reply |
//! | `pretty` | the `echo` reply, pretty-printed over several lines |
//! | `returned-code` | the `echo` reply with `returned_code` instead of `return_code` |
//! | `list-payload` | the `echo` reply with the payload as a list of `{"name","value"}` pairs |
//! | `wrong-job-id` | the `echo` reply with `job_id` one higher than the message's |
//! | `fail` | replies with `return_code` 1 and a message saying that it failed |
//! | `crash` | no reply; writes `testagent: crashing on purpose` to stderr and exits 3 |
//! | `self-signal` | no reply; writes `testagent: sending SIGSEGV to itself` to stderr and sends itself SIGSEGV, which ends it unless it is PID 1 (then it writes `testagent: still running after SIGSEGV` and exits 0) |
//! | `read-eof` | reads stdin to end of file, then gives the `echo` reply with payload field `stdin_bytes`, the number of bytes read |
//! | `no-stdin` | never reads stdin; replies with `message` `no-stdin`, `job_id` from `TESTAGENT_JOB_ID` (omitted when unset) |
//! | `hang` | reads the message, then never exits |
//! | `fork` | starts a child of itself that keeps stdout and stderr open and sleeps 300 s, then replies with `message` `forked child PID` and payload field `child_pid` and exits |
//! | `flood-stdout` | writes to stdout without end |
//! | `flood-stderr` | writes 10 MiB to stderr, then gives the `echo` reply |
//! | `big` | replies with `message` `length=N fnv1a64=HEX`: the byte length and the 64-bit FNV-1a hash of the `message` value, also as payload fields `length` and `fnv1a64` |
//! | `env` | replies with `message` = its whole environment as a JSON object (non-UTF-8 bytes replaced) |
//! | `unicode` | the `echo` reply, with `url_label` set to [`UNICODE_LABEL`] |
//!
//! Exit status is 0 after a reply, 3 for `crash`, and 2 when stdin contains no JSON message or
//! the case is unknown (with the reason on stderr).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Non-ASCII text that the `unicode` case puts in `url_label`.
const UNICODE_LABEL: &str = "Grüße, 世界 ✓ 🚀";
/// Bytes the `flood-stderr` case writes to stderr before replying.
const FLOOD_STDERR_BYTES: usize = 10 * 1024 * 1024;
/// How long the child of the `fork` case sleeps.
const FORK_CHILD_SLEEP: Duration = Duration::from_secs(300);
/// First argument that makes the binary act as the `fork` case's child.
const SLEEP_CHILD_ARGUMENT: &str = "sleep-child";

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(SLEEP_CHILD_ARGUMENT) {
        thread::sleep(FORK_CHILD_SLEEP);
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(code) => code,
        Err(message) => {
            eprintln!("testagent: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let env_case = std::env::var("TESTAGENT_CASE").ok();

    if env_case.as_deref() == Some("no-stdin") {
        let job_id = std::env::var("TESTAGENT_JOB_ID")
            .ok()
            .and_then(|id| id.parse::<u64>().ok());
        let mut reply = json!({
            "type": "info",
            "action": "popup-message",
            "payload": {"message": "no-stdin"},
            "timestamp": now_ms(),
            "return_code": 0,
        });
        if let Some(job_id) = job_id {
            reply["job_id"] = json!(job_id);
        }
        emit(&reply.to_string());
        return Ok(ExitCode::SUCCESS);
    }

    // Read the message: the whole of stdin for read-eof, otherwise exactly one JSON value, as
    // an agent that stops reading after the message would.
    let (message, stdin_bytes) = if env_case.as_deref() == Some("read-eof") {
        let mut text = Vec::new();
        io::stdin()
            .read_to_end(&mut text)
            .map_err(|error| format!("reading stdin failed: {error}"))?;
        let message = first_json_value(serde_json::Deserializer::from_slice(&text).into_iter())?;
        (message, text.len())
    } else {
        let mut stream = serde_json::Deserializer::from_reader(io::stdin().lock()).into_iter();
        let message = first_json_value(&mut stream)?;
        (message, stream.byte_offset())
    };
    let mut message = Message::new(message);
    message.stdin_bytes = stdin_bytes;
    let case = env_case
        .or_else(|| message.field("case"))
        .unwrap_or_else(|| "echo".to_owned());

    handle(&case, &message)
}

/// Returns the first JSON value of a stream, or why there is none.
fn first_json_value(
    mut stream: impl Iterator<Item = serde_json::Result<Value>>,
) -> Result<Value, String> {
    stream
        .next()
        .ok_or("stdin ended before a JSON message")?
        .map_err(|error| format!("stdin is not a JSON message: {error}"))
}

/// Carries out one case for a message that has been read.
fn handle(case: &str, message: &Message) -> Result<ExitCode, String> {
    let text = message.field("message").unwrap_or_default();
    match case {
        "echo" => emit(&message.reply(&text).to_string()),
        "logs" => {
            emit("testagent: starting");
            emit(&format!("testagent: handling job {}", message.job_id));
            emit(&message.reply(&text).to_string());
            emit("testagent: done");
        }
        "pretty" => {
            let reply = message.reply(&text);
            let pretty = serde_json::to_string_pretty(&reply)
                .map_err(|error| format!("formatting the reply failed: {error}"))?;
            emit(&pretty);
        }
        "returned-code" => {
            let mut reply = message.reply(&text);
            if let Some(object) = reply.as_object_mut() {
                if let Some(code) = object.remove("return_code") {
                    object.insert("returned_code".to_owned(), code);
                }
            }
            emit(&reply.to_string());
        }
        "list-payload" => {
            let mut reply = message.reply(&text);
            if message.is_work() {
                reply["payload"] = json!([{"name": "message", "value": text}]);
            }
            emit(&reply.to_string());
        }
        "wrong-job-id" => {
            let mut reply = message.reply(&text);
            if message.is_work() {
                let wrong = message.job_id.as_u64().map_or(0, |id| id.wrapping_add(1));
                reply["job_id"] = json!(wrong);
            }
            emit(&reply.to_string());
        }
        "fail" => {
            let mut reply = message.reply("testagent: the fail case reports failure");
            if message.is_work() {
                reply["return_code"] = json!(1);
            }
            emit(&reply.to_string());
        }
        "crash" => {
            eprintln!("testagent: crashing on purpose");
            return Ok(ExitCode::from(3));
        }
        "self-signal" => {
            eprintln!("testagent: sending SIGSEGV to itself");
            // The Rust runtime handles SIGSEGV to detect stack overflows and returns from a
            // SIGSEGV that no fault caused, so the default action is restored first, as a shell
            // script that runs `kill -SEGV $$` has it.
            // SAFETY: signal only changes this process's disposition of SIGSEGV, and kill only
            // sends a signal; neither touches memory of this process.
            let sent = unsafe {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::kill(libc::getpid(), libc::SIGSEGV)
            };
            if sent != 0 {
                return Err(format!(
                    "sending SIGSEGV failed: {}",
                    io::Error::last_os_error()
                ));
            }
            // Reached only when the signal was ignored, as it is for PID 1 without a handler.
            eprintln!("testagent: still running after SIGSEGV");
        }
        "read-eof" => {
            // Read whatever follows the message. When TESTAGENT_CASE chose the case, stdin was
            // read to the end already and nothing follows.
            let mut rest = Vec::new();
            io::stdin()
                .read_to_end(&mut rest)
                .map_err(|error| format!("reading stdin failed: {error}"))?;
            let mut reply = message.reply(&text);
            if message.is_work() {
                reply["payload"]["stdin_bytes"] = json!(message.stdin_bytes + rest.len());
            }
            emit(&reply.to_string());
        }
        "hang" => loop {
            thread::sleep(Duration::from_secs(3600));
        },
        "fork" => {
            let child = fork_sleeping_child()?;
            let mut reply = message.reply(&format!("forked child {child}"));
            if message.is_work() {
                reply["payload"]["child_pid"] = json!(child);
            }
            emit(&reply.to_string());
        }
        "flood-stdout" => flood_stdout(),
        "flood-stderr" => {
            flood_stderr();
            emit(&message.reply(&text).to_string());
        }
        "big" => {
            let length = text.len();
            let hash = format!("{:016x}", fnv1a64(text.as_bytes()));
            let mut reply = message.reply(&format!("length={length} fnv1a64={hash}"));
            if message.is_work() {
                reply["payload"]["length"] = json!(length);
                reply["payload"]["fnv1a64"] = json!(hash);
            }
            emit(&reply.to_string());
        }
        "env" => {
            let env: BTreeMap<String, String> = std::env::vars_os()
                .map(|(name, value)| {
                    (
                        name.to_string_lossy().into_owned(),
                        value.to_string_lossy().into_owned(),
                    )
                })
                .collect();
            let env = serde_json::to_string(&env)
                .map_err(|error| format!("formatting the environment failed: {error}"))?;
            emit(&message.reply(&env).to_string());
        }
        "unicode" => {
            let mut reply = message.reply(&text);
            if message.is_work() {
                reply["payload"]["url_label"] = json!(UNICODE_LABEL);
            }
            emit(&reply.to_string());
        }
        "no-stdin" => {
            return Err("case `no-stdin` must be chosen with TESTAGENT_CASE".to_owned());
        }
        unknown => return Err(format!("unknown case `{unknown}`")),
    }
    Ok(ExitCode::SUCCESS)
}

/// The message the agent received.
struct Message {
    kind: String,
    job_id: Value,
    agent_id: Value,
    payload: Value,
    /// Bytes read from stdin so far.
    stdin_bytes: usize,
}

impl Message {
    fn new(value: Value) -> Self {
        Self {
            kind: value["type"].as_str().unwrap_or_default().to_owned(),
            job_id: value["job_id"].clone(),
            agent_id: value["agentID"].clone(),
            payload: value["payload"].clone(),
            stdin_bytes: 0,
        }
    }

    fn is_work(&self) -> bool {
        self.kind != "describe"
    }

    /// Returns a payload field as text, from a list of `{"name","value"}` pairs or an object.
    fn field(&self, name: &str) -> Option<String> {
        let value = match &self.payload {
            Value::Array(fields) => fields
                .iter()
                .find(|field| field["name"] == name)
                .map(|field| &field["value"])?,
            Value::Object(fields) => fields.get(name)?,
            _ => return None,
        };
        match value {
            Value::String(text) => Some(text.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// Builds the reply: a heartbeat for `describe`, an `info` reply with `text` otherwise.
    fn reply(&self, text: &str) -> Value {
        if !self.is_work() {
            return json!({"type": "heartbeat"});
        }
        json!({
            "type": "info",
            "job_id": self.job_id,
            "agent": self.agent_id,
            "action": "popup-message",
            "payload": {"message": text},
            "timestamp": now_ms(),
            "return_code": 0,
        })
    }
}

/// Writes one line to stdout. Errors are ignored: the engine may have stopped reading.
fn emit(line: &str) {
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Starts this binary as a child that sleeps with stdout and stderr inherited, and returns its
/// pid. The child is not waited for.
fn fork_sleeping_child() -> Result<u32, String> {
    let program = std::env::current_exe()
        .ok()
        .or_else(|| std::env::args_os().next().map(Into::into))
        .ok_or("cannot find the testagent binary to start a child")?;
    let child = Command::new(program)
        .arg(SLEEP_CHILD_ARGUMENT)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|error| format!("starting the child failed: {error}"))?;
    Ok(child.id())
}

/// Writes lines to stdout until a write fails, then exits.
fn flood_stdout() -> ! {
    let line = format!("{}\n", "x".repeat(1023));
    let mut stdout = io::stdout().lock();
    while stdout.write_all(line.as_bytes()).is_ok() {}
    std::process::exit(1);
}

/// Writes [`FLOOD_STDERR_BYTES`] to stderr in lines of 1 KiB.
fn flood_stderr() {
    let line = format!("{}\n", "e".repeat(1023));
    let mut stderr = io::stderr().lock();
    for _ in 0..FLOOD_STDERR_BYTES / line.len() {
        if stderr.write_all(line.as_bytes()).is_err() {
            break;
        }
    }
}

/// 64-bit FNV-1a hash, used by the `big` case so a test can verify a large value cheaply.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn field_from_list_and_object() {
        let list =
            Message::new(json!({"type": "work", "payload": [{"name": "case", "value": "big"}]}));
        assert_eq!(list.field("case").as_deref(), Some("big"));
        let object = Message::new(json!({"type": "work", "payload": {"case": "fail"}}));
        assert_eq!(object.field("case").as_deref(), Some("fail"));
        assert_eq!(object.field("missing"), None);
    }

    #[test]
    fn describe_reply_is_heartbeat() {
        let describe = Message::new(json!({"type": "describe", "job_id": 1, "agentID": "a"}));
        assert_eq!(describe.reply("x"), json!({"type": "heartbeat"}));
    }
}
