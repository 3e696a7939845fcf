//! Health checks: a `describe` message to each ready integration on an interval, and on demand.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::Service;
use crate::dispatcher::{DescribeOptions, Integration};
use crate::store::{now_ms, BuildState, HealthRecord, IntegrationRecord};

/// How often the periodic loop looks for integrations that are due, at most.
const MAX_TICK: Duration = Duration::from_secs(30);

/// Checks every ready integration whose last check is older than `health.interval_secs`, until
/// the service stops. Checks run one at a time, so they never take more than one agent's worth
/// of runtime capacity away from jobs.
pub(crate) async fn run_periodic(service: Arc<Service>) {
    let interval_secs = service.config.health.interval_secs;
    if interval_secs == 0 {
        tracing::debug!("periodic health checks are off (health.interval_secs = 0)");
        return;
    }
    let interval_ms = i64::try_from(interval_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let tick = Duration::from_secs(interval_secs).min(MAX_TICK);
    loop {
        let integrations = match service.store.integrations().await {
            Ok(integrations) => integrations,
            Err(error) => {
                tracing::error!(error = %error, "listing integrations for health checks failed");
                Vec::new()
            }
        };
        for record in integrations {
            if service.stopping.is_cancelled() {
                return;
            }
            let due = record
                .health
                .as_ref()
                .is_none_or(|health| now_ms() - health.checked_ms >= interval_ms);
            if record.state == BuildState::Ready && due {
                check(&service, record).await;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = service.stopping.cancelled() => return,
        }
    }
}

/// Runs a health check of `agent_id` now and stores it. Returns `None` when the integration
/// does not exist or is not ready.
pub(crate) async fn check_now(service: &Service, agent_id: Uuid) -> Option<HealthRecord> {
    let record = service.store.integration(agent_id).await.ok()??;
    if record.state != BuildState::Ready {
        return None;
    }
    Some(check(service, record).await)
}

/// Runs one check and stores its result.
async fn check(service: &Service, record: IntegrationRecord) -> HealthRecord {
    let report = match &record.prepared {
        Some(prepared) => {
            let mut integration = Integration::new(
                record.manifest.clone(),
                record.package_root.clone(),
                record.digest.clone(),
            );
            integration.env = record.env.clone();
            let options = DescribeOptions {
                timeout: Some(Duration::from_secs(service.config.health.timeout_secs)),
                cancel: Some(service.stopping.child_token()),
                ..DescribeOptions::default()
            };
            match service
                .dispatcher
                .describe(&integration, prepared, options)
                .await
            {
                Ok(report) => (
                    report.healthy,
                    serde_json::to_value(&report).unwrap_or_default(),
                ),
                Err(error) => {
                    tracing::warn!(agent_id = %record.agent_id, error = %error, "health check could not run");
                    (
                        false,
                        serde_json::json!({ "healthy": false, "error": error.to_string() }),
                    )
                }
            }
        }
        None => (
            false,
            serde_json::json!({ "healthy": false, "error": "the package is not prepared" }),
        ),
    };
    let health = HealthRecord {
        checked_ms: now_ms(),
        healthy: report.0,
        report: report.1,
    };
    service.metrics.health_checked(&record.name, health.healthy);
    if let Err(error) = service
        .store
        .set_health(record.agent_id, health.clone())
        .await
    {
        tracing::error!(agent_id = %record.agent_id, error = %error, "storing a health check failed");
    }
    health
}
