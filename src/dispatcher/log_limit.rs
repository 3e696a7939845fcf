//! A rate limit for log lines that agents can trigger, so that a misbehaving agent that runs
//! often cannot flood the log. Suppressed lines are counted, and the next line let through
//! reports how many there were.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lets through at most `burst` lines per `window`, a fixed window that starts with the first
/// line after the previous window ended.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    burst: u32,
    window: Duration,
    state: Mutex<WindowState>,
}

#[derive(Debug, Default)]
struct WindowState {
    /// Start of the current window; `None` before the first line.
    started: Option<Instant>,
    /// Lines let through in the current window.
    logged: u32,
    /// Lines dropped since the last line let through.
    suppressed: u64,
}

impl LogLimiter {
    /// Creates a limiter that lets `burst` lines through per `window`.
    pub(crate) fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            state: Mutex::new(WindowState::default()),
        }
    }

    /// Decides whether a line may be logged at `now`. Returns the number of lines suppressed
    /// since the last one let through, or `None` when this line must be dropped.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        // Every critical section leaves the counters consistent, so a poisoned lock still holds
        // a usable state.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let window_over = state
            .started
            .is_none_or(|started| now.saturating_duration_since(started) >= self.window);
        if window_over {
            state.started = Some(now);
            state.logged = 0;
        }
        if state.logged >= self.burst {
            state.suppressed += 1;
            return None;
        }
        state.logged += 1;
        Some(std::mem::take(&mut state.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_drops_past_burst_and_counts() {
        let limiter = LogLimiter::new(2, Duration::from_secs(60));
        let start = Instant::now();

        assert_eq!(limiter.admit(start), Some(0));
        assert_eq!(limiter.admit(start + Duration::from_secs(1)), Some(0));
        assert_eq!(limiter.admit(start + Duration::from_secs(2)), None);
        assert_eq!(limiter.admit(start + Duration::from_secs(59)), None);
        assert_eq!(limiter.admit(start + Duration::from_secs(60)), Some(2));
        assert_eq!(limiter.admit(start + Duration::from_secs(61)), Some(0));
        assert_eq!(limiter.admit(start + Duration::from_secs(62)), None);
    }

    /// A window starts with the first line after the previous one ended, not on a fixed grid.
    #[test]
    fn limiter_window_starts_with_next_line() {
        let limiter = LogLimiter::new(1, Duration::from_secs(10));
        let start = Instant::now();

        assert_eq!(limiter.admit(start), Some(0));
        assert_eq!(limiter.admit(start + Duration::from_secs(25)), Some(0));
        assert_eq!(limiter.admit(start + Duration::from_secs(34)), None);
        assert_eq!(limiter.admit(start + Duration::from_secs(35)), Some(1));
    }

    #[test]
    fn limiter_with_zero_burst_drops_everything() {
        let limiter = LogLimiter::new(0, Duration::from_secs(1));
        assert_eq!(limiter.admit(Instant::now()), None);
    }
}
