//! Agent reply parsing: arbitrary stdout bytes and job ids.
//!
//! The first 8 bytes of an input are the expected job id (little-endian), the rest is the
//! agent's stdout. Both parsers must return without panicking, every accepted reply must be
//! normalised as documented, and the result must equal what the parser returns for the objects
//! a plain quadratic scan finds, copied one per line.

#![no_main]

use agentrun::protocol::{parse_heartbeat, parse_info_reply, ReplyError, KNOWN_ACTIONS};
use agentrun_fuzz::{object_lines, reference_objects};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((id_bytes, stdout)) = data.split_first_chunk::<8>() else {
        return;
    };
    let job_id = u64::from_le_bytes(*id_bytes);

    let info = parse_info_reply(stdout, job_id);
    let heartbeat = parse_heartbeat(stdout, job_id);

    match &info {
        Ok(reply) => {
            assert!(KNOWN_ACTIONS.contains(&reply.action.as_str()), "{reply:?}");
            assert!(reply.job_id.is_none_or(|id| id == job_id), "{reply:?}");
            assert_eq!(reply.raw["type"], "info");
            assert_eq!(reply.raw["action"], Value::from(reply.action.as_str()));
            assert_eq!(reply.raw["return_code"], Value::from(reply.return_code));
            assert_eq!(
                reply.raw["payload"]["message"],
                Value::from(reply.message.as_str())
            );
            assert!(reply.raw.get("returned_code").is_none(), "{reply:?}");
        }
        Err(error) => check_error(error),
    }
    match &heartbeat {
        Ok(reply) => {
            assert_eq!(reply.raw["type"], "heartbeat");
            assert!(reply.job_id.is_none_or(|id| id == job_id), "{reply:?}");
        }
        Err(error) => check_error(error),
    }

    // The same objects, one per line, must give the same result: the scanner may neither miss
    // an object that starts a line nor invent one. The copy drops a value that the output cuts
    // off, so where the original reports one, the copy reports no reply at all.
    let plain = object_lines(stdout, &reference_objects(stdout));
    assert_same_result(&info, &parse_info_reply(&plain, job_id), stdout);
    assert_same_result(&heartbeat, &parse_heartbeat(&plain, job_id), stdout);
});

fn assert_same_result<T: PartialEq + std::fmt::Debug>(
    original: &Result<T, ReplyError>,
    plain: &Result<T, ReplyError>,
    stdout: &[u8],
) {
    if let Err(ReplyError::Truncated { .. }) = original {
        assert!(
            matches!(plain, Err(ReplyError::NoReply { .. })),
            "stdout: {stdout:?}, plain: {plain:?}"
        );
    } else {
        assert_eq!(original, plain, "stdout: {stdout:?}");
    }
}

fn check_error(error: &ReplyError) {
    if let ReplyError::NoReply {
        objects_seen,
        other_types,
        ..
    } = error
    {
        assert!(other_types.len() <= *objects_seen, "{error:?}");
    }
    if let ReplyError::Truncated { line, excerpt, .. } = error {
        assert!(*line >= 1, "{error:?}");
        assert!(excerpt.starts_with('{'), "{error:?}");
        assert!(!excerpt.contains('\n'), "{error:?}");
    }
    // Every message quotes at most a short excerpt of what the agent wrote.
    assert!(!error.to_string().is_empty());
}
