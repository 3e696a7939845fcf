//! Prometheus metrics for `GET /metrics`, in the OpenMetrics text format.
//!
//! Counters and histograms live in memory and start from zero with each process. Job counts by
//! state and the queue depth are read from the store at each scrape, so they stay right across
//! restarts.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::dispatcher::JobStatus;
use crate::store::{IntegrationRecord, JobState, StateCount};

/// Content type of [`Metrics::render`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

fn new_duration_histogram() -> Histogram {
    // 10 ms to about 164 s, doubling: short subprocess jobs and slow container jobs both land
    // in a bucket of their own.
    Histogram::new(exponential_buckets(0.01, 2.0, 15))
}

/// The service's in-memory metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    submitted: Family<Labels, Counter>,
    finished: Family<Labels, Counter>,
    durations: Family<Labels, Histogram, fn() -> Histogram>,
    health_checks: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            submitted: Family::default(),
            finished: Family::default(),
            durations: Family::new_with_constructor(new_duration_histogram),
            health_checks: Family::default(),
        }
    }
}

impl Metrics {
    /// Counts a submitted job.
    pub(crate) fn job_submitted(&self, integration: &str) {
        self.submitted
            .get_or_create(&vec![("integration".to_owned(), integration.to_owned())])
            .inc();
    }

    /// Counts a finished job and records its duration.
    pub(crate) fn observe_job(&self, integration: &str, status: JobStatus, duration_ms: u64) {
        let labels = vec![
            ("integration".to_owned(), integration.to_owned()),
            ("status".to_owned(), status.as_str().to_owned()),
        ];
        self.finished.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(duration_ms as f64 / 1000.0);
    }

    /// Counts a health check.
    pub(crate) fn health_checked(&self, integration: &str, healthy: bool) {
        self.health_checks
            .get_or_create(&vec![
                ("integration".to_owned(), integration.to_owned()),
                ("healthy".to_owned(), healthy.to_string()),
            ])
            .inc();
    }

    /// Renders every metric, with job counts and integrations read from the store.
    pub(crate) fn render(
        &self,
        counts: &[StateCount],
        integrations: &[IntegrationRecord],
        running_here: usize,
    ) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::with_prefix("agentrun");
        registry.register(
            "jobs_submitted",
            "Jobs accepted by the API since the service started",
            self.submitted.clone(),
        );
        registry.register(
            "jobs_finished",
            "Jobs that finished since the service started, by integration and status",
            self.finished.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Time the executor took to run a job, by integration and status",
            self.durations.clone(),
        );
        registry.register(
            "health_checks",
            "Health checks run since the service started, by integration and result",
            self.health_checks.clone(),
        );

        let jobs: Family<Labels, Gauge> = Family::default();
        let queue_depth: Gauge = Gauge::default();
        for count in counts {
            let value = i64::try_from(count.count).unwrap_or(i64::MAX);
            jobs.get_or_create(&vec![
                ("integration".to_owned(), count.integration.clone()),
                ("state".to_owned(), count.state.as_str().to_owned()),
            ])
            .set(value);
            if count.state == JobState::Queued {
                queue_depth.inc_by(value);
            }
        }
        registry.register("jobs", "Jobs in the store, by integration and state", jobs);
        registry.register("queue_depth", "Jobs waiting for a worker", queue_depth);

        let running: Gauge = Gauge::default();
        running.set(i64::try_from(running_here).unwrap_or(i64::MAX));
        registry.register("workers_busy", "Jobs this process is running now", running);

        let integration_states: Family<Labels, Gauge> = Family::default();
        let unhealthy: Family<Labels, Gauge> = Family::default();
        for record in integrations {
            integration_states
                .get_or_create(&vec![(
                    "state".to_owned(),
                    record.state.as_str().to_owned(),
                )])
                .inc();
            let healthy = record.health.as_ref().is_none_or(|health| health.healthy);
            unhealthy
                .get_or_create(&vec![("integration".to_owned(), record.name.clone())])
                .set(i64::from(!healthy));
        }
        registry.register(
            "integrations",
            "Integrations by build state",
            integration_states,
        );
        registry.register(
            "integration_unhealthy",
            "1 when the integration's last health check failed",
            unhealthy,
        );

        let mut text = String::new();
        encode(&mut text, &registry)?;
        Ok(text)
    }
}
