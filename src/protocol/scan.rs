//! Finding the JSON objects in an agent's stdout, which may also contain log lines.
//!
//! A candidate is a `{` at the start of a line, after optional spaces, tabs or `\r`. Trying
//! `serde_json` at every candidate is quadratic on hostile output such as many lines of `{"a":[`,
//! where each attempt reads to the end of the input before it fails. The search therefore runs in
//! two passes:
//!
//! 1. A lexer reads the output once and records the span of every candidate whose brackets
//!    balance, tracking only brackets and string literals. A candidate that never closes costs
//!    nothing more.
//! 2. The balanced spans are parsed in order of their start. A span that parses is taken whole and
//!    the spans nested in it are skipped. A span that fails leaves its error position behind: a
//!    nested span that contains that position fails at the same byte (the parser read it as a
//!    nested value with the same bytes), so it is skipped without parsing.
//!
//! Nesting is capped at [`MAX_DEPTH`] levels, below `serde_json`'s own limit of 128, so every
//! parse error is a syntax error at a definite byte and never a depth error that depends on where
//! the parse started.

use std::collections::VecDeque;
use std::ops::Range;

use serde_json::{Map, Value};

/// Deepest bracket nesting, counted from a candidate's `{`, that a reply may have.
pub(crate) const MAX_DEPTH: usize = 100;

/// What [`scan`] found in an agent's output.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Scan {
    /// The JSON objects that start at a line start, in order of appearance. Objects nested in
    /// another returned object are not returned on their own.
    pub objects: Vec<Map<String, Value>>,
    /// Byte offset of the first candidate whose brackets are still open where the output ends:
    /// the agent stopped writing in the middle of a JSON value.
    pub unterminated: Option<usize>,
}

/// Finds the JSON objects that start at a line start in `output`, and a candidate that the end
/// of the output cuts off.
pub(crate) fn scan(output: &[u8]) -> Scan {
    let (spans, unterminated) = balanced_spans(output);
    Scan {
        objects: parse_spans(output, spans),
        unterminated,
    }
}

/// Parses the balanced candidate spans in order, as described in the module documentation.
fn parse_spans(output: &[u8], spans: Vec<Range<usize>>) -> Vec<Map<String, Value>> {
    let mut objects = Vec::new();
    let mut taken_until = 0;
    // Failed spans that enclose the current one: (span end, byte offset of the parse error).
    let mut failures: Vec<(usize, usize)> = Vec::new();

    for span in spans {
        if span.start < taken_until {
            continue;
        }
        while failures.last().is_some_and(|&(end, _)| end <= span.start) {
            failures.pop();
        }

        // The margin of one byte keeps a span whose own `{` was the unexpected token from being
        // skipped: that span did not fail, the enclosing one did.
        if let Some(&(_, error_at)) = failures.last() {
            if span.start + 1 < error_at && error_at < span.end {
                failures.push((span.end, error_at));
                continue;
            }
        }

        match serde_json::from_slice::<Value>(&output[span.clone()]) {
            Ok(Value::Object(object)) => {
                taken_until = span.end;
                objects.push(object);
            }
            // A balanced span that starts with `{` parses to an object or not at all.
            Ok(_) => {}
            Err(error) => {
                let error_at = span.start + error_offset(&output[span.clone()], &error);
                failures.push((span.end, error_at));
            }
        }
    }
    objects
}

/// Returns the byte offset in `text` that a `serde_json` error points at.
fn error_offset(text: &[u8], error: &serde_json::Error) -> usize {
    let line_start = if error.line() <= 1 {
        0
    } else {
        text.iter()
            .enumerate()
            .filter(|&(_, &byte)| byte == b'\n')
            .nth(error.line() - 2)
            .map_or(text.len(), |(index, _)| index + 1)
    };
    (line_start + error.column().saturating_sub(1)).min(text.len())
}

/// One open bracket seen by the lexer.
struct Frame {
    /// `{` or `[`.
    open: u8,
    /// Index in the span list when this `{` is a candidate (at a line start).
    candidate: Option<usize>,
}

/// Returns the spans of all candidates whose brackets balance, in order of their start, and the
/// start of the outermost candidate that is still open at the end of `output`.
fn balanced_spans(output: &[u8]) -> (Vec<Range<usize>>, Option<usize>) {
    // Every candidate gets an entry when it opens, so the list stays in order of start without
    // sorting. `usize::MAX` marks a candidate that has not closed (yet).
    let mut spans: Vec<Range<usize>> = Vec::new();
    let mut stack: VecDeque<Frame> = VecDeque::new();
    let mut in_string = false;
    let mut escaped = false;
    // True while the current line has had only whitespace so far.
    let mut at_line_start = true;
    // Start of the candidate at the bottom of the stack. The depth cap may drop its frame, but
    // the output is still inside it until the stack empties.
    let mut outermost = 0;

    for (index, &byte) in output.iter().enumerate() {
        // Outside any candidate only line starts matter.
        if stack.is_empty() {
            match byte {
                b'{' if at_line_start => {
                    outermost = index;
                    spans.push(index..usize::MAX);
                    stack.push_back(Frame {
                        open: byte,
                        candidate: Some(spans.len() - 1),
                    });
                    at_line_start = false;
                }
                b'\n' => at_line_start = true,
                b' ' | b'\t' | b'\r' => {}
                _ => at_line_start = false,
            }
            continue;
        }

        if in_string {
            if byte < 0x20 {
                // JSON strings cannot hold control characters, not even escaped ones, so no
                // string spans two lines and every open candidate fails here.
                stack.clear();
                in_string = false;
                escaped = false;
                at_line_start = byte == b'\n';
            } else if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }

        match byte {
            b'"' => {
                in_string = true;
                at_line_start = false;
            }
            b'{' | b'[' => {
                let candidate = (byte == b'{' && at_line_start).then(|| {
                    spans.push(index..usize::MAX);
                    spans.len() - 1
                });
                stack.push_back(Frame {
                    open: byte,
                    candidate,
                });
                // Candidates more than MAX_DEPTH levels below the newest bracket can no longer
                // parse, but the newer ones still can.
                if stack.len() > MAX_DEPTH {
                    stack.pop_front();
                }
                at_line_start = false;
            }
            b'}' | b']' => {
                let expected_open = if byte == b'}' { b'{' } else { b'[' };
                match stack.pop_back() {
                    Some(frame) if frame.open == expected_open => {
                        if let Some(entry) = frame.candidate {
                            spans[entry].end = index + 1;
                        }
                    }
                    // A mismatched bracket fails every open candidate.
                    _ => stack.clear(),
                }
                at_line_start = false;
            }
            b'\n' => at_line_start = true,
            b' ' | b'\t' | b'\r' => {}
            _ => at_line_start = false,
        }
    }
    let unterminated = (!stack.is_empty()).then_some(outermost);
    spans.retain(|span| span.end != usize::MAX);
    (spans, unterminated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find_objects(output: &[u8]) -> Vec<Map<String, Value>> {
        scan(output).objects
    }

    fn types(output: &str) -> Vec<String> {
        find_objects(output.as_bytes())
            .into_iter()
            .map(|object| Value::Object(object).to_string())
            .collect()
    }

    /// Parses at every line start, the quadratic way, as the reference for `find_objects`.
    fn reference(output: &[u8]) -> Vec<Map<String, Value>> {
        let mut objects = Vec::new();
        let mut position = 0;
        let mut line_start = true;
        while position < output.len() {
            let byte = output[position];
            if line_start && byte == b'{' {
                let mut stream =
                    serde_json::Deserializer::from_slice(&output[position..]).into_iter::<Value>();
                if let Some(Ok(Value::Object(object))) = stream.next() {
                    objects.push(object);
                    position += stream.byte_offset();
                    line_start = false;
                    continue;
                }
            }
            match byte {
                b'\n' => line_start = true,
                b' ' | b'\t' | b'\r' => {}
                _ => line_start = false,
            }
            position += 1;
        }
        objects
    }

    #[test]
    fn scan_finds_object_between_logs() {
        let found = types("log {\"x\":1}\n  {\"a\":1}\nafter\n");
        assert_eq!(found, [r#"{"a":1}"#]);
    }

    #[test]
    fn scan_skips_nested_objects() {
        let found = types("{\"a\":\n{\"b\":1}\n}\n");
        assert_eq!(found, [r#"{"a":{"b":1}}"#]);
    }

    #[test]
    fn scan_finds_object_after_unterminated_one() {
        let found = types("{\"a\":[\n{\"b\":1}\n");
        assert_eq!(found, [r#"{"b":1}"#]);
    }

    #[test]
    fn scan_finds_object_after_syntax_error() {
        // The outer object fails at the `{` of the inner one, which must still be tried.
        let found = types("{\"a\":1\n{\"b\":2}\n}\n");
        assert_eq!(found, [r#"{"b":2}"#]);
    }

    #[test]
    fn scan_finds_inner_object_when_outer_fails_later() {
        let found = types("{\"a\":[\n{\"b\":2},\n{\"c\":3}\nx]}\n");
        assert_eq!(found, [r#"{"b":2}"#, r#"{"c":3}"#]);
    }

    #[test]
    fn scan_skips_inner_object_containing_error() {
        let found = types("{\"a\":[\n{\"b\":x}\n]}\n{\"ok\":true}\n");
        assert_eq!(found, [r#"{"ok":true}"#]);
    }

    #[test]
    fn scan_ignores_braces_in_strings() {
        let found = types("{\"a\":\"}\\\"{\"}\n");
        assert_eq!(found, [r#"{"a":"}\"{"}"#]);
    }

    #[test]
    fn scan_keeps_candidates_past_depth_cap() {
        let mut output = "{\"a\":[\n".repeat(MAX_DEPTH * 2);
        output.push_str("{\"deep\":1}\n");
        assert_eq!(types(&output), [r#"{"deep":1}"#]);
    }

    #[test]
    fn scan_reports_value_cut_off_at_end() {
        let output = b"log line\n{\"type\": \"info\", \"payload\": {\"message\": \"cut";
        let found = scan(output);
        assert!(found.objects.is_empty());
        assert_eq!(found.unterminated, Some(9));
    }

    /// The outermost open candidate is reported, not one nested in it.
    #[test]
    fn scan_reports_outermost_open_candidate() {
        let found = scan(b"{\"a\":1}\n{\"b\":[\n{\"c\":1}\n{\"d\":");
        assert_eq!(found.objects.len(), 2);
        assert_eq!(found.unterminated, Some(8));
    }

    /// Output that ends after a complete object, or in a candidate that already failed, is not
    /// cut off.
    /// Past the depth cap, the value that the output is cut off in is still the first one.
    #[test]
    fn scan_reports_open_candidate_past_depth_cap() {
        let output = "{\"a\":[\n".repeat(MAX_DEPTH * 3);
        assert_eq!(scan(output.as_bytes()).unterminated, Some(0));
    }

    #[test]
    fn scan_without_open_candidate_at_end() {
        assert_eq!(scan(b"{\"a\":1}\n").unterminated, None);
        assert_eq!(scan(b"{\"a\":1}").unterminated, None);
        assert_eq!(scan(b"{\"a\":\"x\ny\"").unterminated, None);
        assert_eq!(scan(b"text {\"a\":").unterminated, None);
        assert_eq!(scan(b"").unterminated, None);
    }

    #[test]
    fn scan_error_offset_points_at_bad_byte() {
        let text = b"{\n\"a\"\n:\n[1,\n2\n,x]}";
        let error = serde_json::from_slice::<Value>(text).expect_err("invalid JSON");
        assert_eq!(text[error_offset(text, &error)], b'x');

        let text = b"{\"a\":1\n{\"b\":1}}";
        let error = serde_json::from_slice::<Value>(text).expect_err("invalid JSON");
        assert_eq!(error_offset(text, &error), 7);
    }

    /// Compares `find_objects` with the quadratic reference on generated outputs built from
    /// fragments that open, close and break objects at line starts.
    #[test]
    fn scan_matches_reference_on_generated_output() {
        const FRAGMENTS: [&str; 16] = [
            "{",
            "}",
            "[",
            "]",
            "\"a\":",
            "1",
            ",",
            "\n",
            "  ",
            "{\"t\":2}",
            "x",
            "\"s{\"",
            "\\",
            "\"",
            "\r\n",
            "{\"u\":[1,{\"v\":null}]}",
        ];
        // A small linear congruential generator keeps the test deterministic without a
        // dependency.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            let mut output = String::new();
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let length = (state >> 59) as usize + 1;
            for _ in 0..length {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                output.push_str(FRAGMENTS[(state >> 60) as usize]);
            }
            assert_eq!(
                find_objects(output.as_bytes()),
                reference(output.as_bytes()),
                "output: {output:?}"
            );
        }
    }
}
