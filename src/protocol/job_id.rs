//! Job ids: epoch milliseconds, bumped so that none repeats.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Issues job ids: the current time in epoch milliseconds, or one more than the last id issued
/// when the clock has not moved past it.
///
/// Ids are unique and strictly increasing for one generator, also when many threads draw ids in
/// the same millisecond and when the system clock goes back. A new process starts from the clock.
/// A caller that keeps jobs across restarts seeds the generator with the highest id it has stored
/// ([`JobIdGenerator::seed`]), so that ids do not repeat after a restart either.
#[derive(Debug, Default)]
pub struct JobIdGenerator {
    last: AtomicU64,
}

impl JobIdGenerator {
    /// Creates a generator that issues ids from the clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a generator whose ids are all greater than `highest_used`.
    pub fn starting_after(highest_used: u64) -> Self {
        Self {
            last: AtomicU64::new(highest_used),
        }
    }

    /// Makes every later id greater than `highest_used`. Seeding with a lower value than an id
    /// already issued has no effect.
    pub fn seed(&self, highest_used: u64) {
        self.last.fetch_max(highest_used, Ordering::SeqCst);
    }

    /// Returns the next id: the clock in epoch milliseconds, or the last id plus one when that is
    /// greater.
    pub fn next_id(&self) -> u64 {
        self.next_with_clock(epoch_millis())
    }

    fn next_with_clock(&self, now: u64) -> u64 {
        let mut last = self.last.load(Ordering::SeqCst);
        loop {
            let next = now.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(current) => last = current,
            }
        }
    }
}

/// Returns the wall clock in milliseconds since the Unix epoch, or 0 for a clock set before it.
fn epoch_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn job_id_follows_clock() {
        let before = epoch_millis();
        let id = JobIdGenerator::new().next_id();
        assert!(id >= before, "id {id} is before the clock {before}");
    }

    #[test]
    fn job_id_bumps_within_millisecond() {
        let generator = JobIdGenerator::new();
        assert_eq!(generator.next_with_clock(1_000), 1_000);
        assert_eq!(generator.next_with_clock(1_000), 1_001);
        assert_eq!(generator.next_with_clock(1_000), 1_002);
        assert_eq!(generator.next_with_clock(5_000), 5_000);
    }

    #[test]
    fn job_id_survives_clock_going_back() {
        let generator = JobIdGenerator::new();
        assert_eq!(generator.next_with_clock(2_000), 2_000);
        assert_eq!(generator.next_with_clock(1_500), 2_001);
    }

    #[test]
    fn job_id_seed_moves_past_stored_ids() {
        let generator = JobIdGenerator::new();
        generator.seed(u64::MAX / 2);
        assert_eq!(generator.next_with_clock(1_000), u64::MAX / 2 + 1);

        // A lower seed must not move the generator back.
        generator.seed(10);
        assert_eq!(generator.next_with_clock(1_000), u64::MAX / 2 + 2);

        let seeded = JobIdGenerator::starting_after(3_000);
        assert_eq!(seeded.next_with_clock(1_000), 3_001);
    }

    #[test]
    fn job_id_unique_across_threads() {
        let generator = Arc::new(JobIdGenerator::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let generator = Arc::clone(&generator);
                std::thread::spawn(move || {
                    (0..2_000).map(|_| generator.next_id()).collect::<Vec<_>>()
                })
            })
            .collect();

        let mut seen = HashSet::new();
        for thread in threads {
            let ids = thread.join().expect("id thread does not panic");
            assert!(
                ids.windows(2).all(|pair| pair[0] < pair[1]),
                "ids of one thread are not increasing"
            );
            for id in ids {
                assert!(seen.insert(id), "id {id} was issued twice");
            }
        }
        assert_eq!(seen.len(), 16_000);
    }
}
