//! Summaries of measured samples.

use std::time::Duration;

/// Median and 99th percentile of per-job latencies.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    pub median: Duration,
    pub p99: Duration,
    pub samples: usize,
}

impl Latency {
    /// Summarises `samples`, which must not be empty. Percentiles use the nearest-rank method.
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let rank = |fraction: f64| {
            let index = (fraction * samples.len() as f64).ceil() as usize;
            samples[index.clamp(1, samples.len()) - 1]
        };
        Self {
            median: rank(0.5),
            p99: rank(0.99),
            samples: samples.len(),
        }
    }
}

/// Jobs finished per second at a fixed concurrency.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    pub jobs_per_sec: f64,
    pub jobs: usize,
}

impl Throughput {
    pub fn of(jobs: usize, elapsed: Duration) -> Self {
        Self {
            jobs_per_sec: jobs as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
            jobs,
        }
    }
}

/// Formats a duration in milliseconds with a precision that suits its size.
pub fn ms(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// Formats `numerator / denominator` as a ratio such as `0.93×`.
pub fn ratio(numerator: f64, denominator: f64) -> String {
    if denominator <= 0.0 {
        return "-".to_owned();
    }
    format!("{:.2}×", numerator / denominator)
}
