//! Output collection shared by all backends, so that caps and tails behave the same everywhere.

use std::collections::VecDeque;

/// Collects an agent's stdout up to a cap and keeps the tail of its stderr.
///
/// Backends feed it chunks as they arrive, from pipes or from a container's attach stream.
#[derive(Debug)]
pub struct OutputCapture {
    stdout: Vec<u8>,
    max_stdout_bytes: usize,
    stdout_overflow: bool,
    stderr_tail: VecDeque<u8>,
    stderr_tail_bytes: usize,
    stderr_total_bytes: u64,
}

impl OutputCapture {
    /// Creates an empty capture with the given stdout cap and stderr tail size, both in bytes.
    pub fn new(max_stdout_bytes: usize, stderr_tail_bytes: usize) -> Self {
        Self {
            stdout: Vec::new(),
            max_stdout_bytes,
            stdout_overflow: false,
            stderr_tail: VecDeque::new(),
            stderr_tail_bytes,
            stderr_total_bytes: 0,
        }
    }

    /// Appends stdout bytes. Returns false once the agent has written more than the cap: the
    /// bytes past the cap are dropped and the caller must kill the agent.
    pub fn push_stdout(&mut self, chunk: &[u8]) -> bool {
        let room = self.max_stdout_bytes.saturating_sub(self.stdout.len());
        if chunk.len() > room {
            self.stdout.extend_from_slice(&chunk[..room]);
            self.stdout_overflow = true;
            return false;
        }
        self.stdout.extend_from_slice(chunk);
        !self.stdout_overflow
    }

    /// Appends stderr bytes, keeping only the last `stderr_tail_bytes`.
    pub fn push_stderr(&mut self, chunk: &[u8]) {
        self.stderr_total_bytes += chunk.len() as u64;
        let keep = chunk.len().min(self.stderr_tail_bytes);
        let chunk = &chunk[chunk.len() - keep..];
        let overflow =
            (self.stderr_tail.len() + chunk.len()).saturating_sub(self.stderr_tail_bytes);
        self.stderr_tail.drain(..overflow);
        self.stderr_tail.extend(chunk);
    }

    /// Returns true once stdout passed the cap.
    pub fn stdout_overflow(&self) -> bool {
        self.stdout_overflow
    }

    /// Returns `(stdout, stderr_tail, stderr_total_bytes)`.
    pub fn finish(self) -> (Vec<u8>, Vec<u8>, u64) {
        (
            self.stdout,
            self.stderr_tail.into_iter().collect(),
            self.stderr_total_bytes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_within_cap_is_kept() {
        let mut capture = OutputCapture::new(8, 4);
        assert!(capture.push_stdout(b"1234"));
        assert!(capture.push_stdout(b"5678"));
        assert!(!capture.stdout_overflow());
        assert_eq!(capture.finish().0, b"12345678");
    }

    #[test]
    fn stdout_past_cap_overflows() {
        let mut capture = OutputCapture::new(5, 4);
        assert!(capture.push_stdout(b"1234"));
        assert!(!capture.push_stdout(b"56"));
        assert!(capture.stdout_overflow());
        assert!(!capture.push_stdout(b""));
        assert_eq!(capture.finish().0, b"12345");
    }

    #[test]
    fn stderr_keeps_tail() {
        let mut capture = OutputCapture::new(0, 4);
        capture.push_stderr(b"abc");
        capture.push_stderr(b"de");
        assert_eq!(capture.finish().1, b"bcde");
    }

    #[test]
    fn stderr_large_chunk_keeps_end() {
        let mut capture = OutputCapture::new(0, 3);
        capture.push_stderr(b"x");
        capture.push_stderr(b"123456");
        let (_, tail, total) = capture.finish();
        assert_eq!(tail, b"456");
        assert_eq!(total, 7);
    }
}
