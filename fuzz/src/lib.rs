//! Reference models shared by the fuzz targets.
//!
//! Each model is the simplest correct way to compute a result, too slow or too plain for the
//! engine itself. The targets compare the engine's result with the model's on every input.

use std::cmp::Reverse;
use std::ops::Range;

use agentrun::forms::KEYWORDS;
use serde_json::Value;

/// Deepest bracket nesting that the reply scanner accepts in one object, counted from the
/// object's own `{`. The scanner's constant is private to the crate; this must stay equal to it.
pub const MAX_REPLY_DEPTH: usize = 100;

/// Returns the byte ranges of the JSON objects that start at a line start in `output`, the
/// quadratic way: a full `serde_json` parse at every `{` that has only spaces, tabs or `\r`
/// before it on its line.
///
/// An object that parses is taken whole, and scanning continues after it. Objects nested deeper
/// than [`MAX_REPLY_DEPTH`] count as failures, as in the engine's scanner.
pub fn reference_objects(output: &[u8]) -> Vec<Range<usize>> {
    let mut objects = Vec::new();
    let mut position = 0;
    let mut line_start = true;
    while position < output.len() {
        let byte = output[position];
        if line_start && byte == b'{' {
            let mut stream =
                serde_json::Deserializer::from_slice(&output[position..]).into_iter::<Value>();
            if let Some(Ok(object @ Value::Object(_))) = stream.next() {
                if depth(&object) <= MAX_REPLY_DEPTH {
                    let end = position + stream.byte_offset();
                    objects.push(position..end);
                    position = end;
                    line_start = false;
                    continue;
                }
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

/// Returns the bracket nesting of a JSON value: 0 for a scalar, 1 for `{}` or `[]`.
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Writes the `objects` of `output` one per line, as the agent wrote them, and nothing else: an
/// output in which every object is trivially a candidate.
///
/// The original bytes are kept rather than the parsed values written again, because a number
/// that `serde_json` reads as a float does not always print back to the same float.
pub fn object_lines(output: &[u8], objects: &[Range<usize>]) -> Vec<u8> {
    let mut lines = Vec::new();
    for object in objects {
        lines.extend_from_slice(&output[object.clone()]);
        lines.push(b'\n');
    }
    lines
}

/// Replaces `SIFT-*` keywords in `text` the plain way: at each character, try every keyword from
/// the longest down, and copy the character when none matches.
///
/// `value_of` maps a context key to its value. Returns the text and the keywords that had no
/// value, each once, in order of first appearance.
pub fn reference_substitute(
    text: &str,
    value_of: impl Fn(&str) -> Option<String>,
) -> (String, Vec<&'static str>) {
    let mut keywords: Vec<(&'static str, &'static str)> = KEYWORDS.to_vec();
    keywords.sort_by_key(|(keyword, _)| Reverse(keyword.len()));

    let mut output = String::new();
    let mut missing = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        match keywords
            .iter()
            .find(|(keyword, _)| rest.starts_with(keyword))
        {
            Some(&(keyword, key)) => {
                match value_of(key) {
                    Some(value) => output.push_str(&value),
                    None if !missing.contains(&keyword) => missing.push(keyword),
                    None => {}
                }
                rest = &rest[keyword.len()..];
            }
            None => {
                output.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    (output, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_objects_skips_nested_and_mid_line() {
        let output = b"log {\"a\":1}\n {\"b\":{\"c\":2}}\nx\n";
        let found = reference_objects(output);
        assert_eq!(object_lines(output, &found), b"{\"b\":{\"c\":2}}\n");
    }

    #[test]
    fn reference_objects_rejects_too_deep() {
        let deep = format!(
            "{}{}",
            "{\"a\":".repeat(MAX_REPLY_DEPTH + 1),
            "}".repeat(MAX_REPLY_DEPTH + 1)
        );
        assert!(reference_objects(deep.as_bytes()).is_empty());
    }

    #[test]
    fn reference_substitute_longest_first() {
        let (text, missing) = reference_substitute("SIFT-SELECTED-NODE-ID SIFT-USER-NAME", |key| {
            (key == "selected-node-id").then(|| "n1".to_owned())
        });
        assert_eq!(text, "n1 ");
        assert_eq!(missing, ["SIFT-USER-NAME"]);
    }
}
