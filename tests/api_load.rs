//! A short run of the load test (`tests/load/mod.rs`): jobs submitted over TCP at a fixed rate
//! for 10 s are all stored, each run exactly once, and all succeed. The long run is the
//! `api-load` example.

#[path = "load/mod.rs"]
mod load;

use std::time::Duration;

/// 20 submissions a second for 10 s lose and duplicate no job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_load_loses_no_job() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = load::LoadOptions {
        binary: env!("CARGO_BIN_EXE_agentrun").into(),
        rate_per_sec: 20.0,
        duration: Duration::from_secs(10),
        sample_interval: Duration::from_secs(1),
        concurrency: 8,
        per_integration: 8,
        max_in_flight: 256,
        drain_timeout: Duration::from_secs(120),
    };
    let report = tokio::time::timeout(Duration::from_secs(300), load::run(&options, dir.path()))
        .await
        .expect("the load test ends within 300 s")
        .expect("the load test runs");
    let summary = report.summary();
    eprint!("{summary}");

    assert!(report.accepted.len() >= 150, "{summary}");
    assert_eq!(report.rejected.len(), 0, "{summary}");
    assert_eq!(report.lost, Vec::<u64>::new(), "{summary}");
    assert_eq!(report.duplicated, Vec::<u64>::new(), "{summary}");
    assert_eq!(report.unexpected, Vec::<u64>::new(), "{summary}");
    assert_eq!(report.missing_in_store, Vec::<u64>::new(), "{summary}");
    assert_eq!(report.ran.len(), report.accepted.len(), "{summary}");
    assert_eq!(
        report.states.keys().collect::<Vec<_>>(),
        ["succeeded"],
        "{summary}"
    );
    assert!(!report.memory.is_empty(), "no memory sample: {summary}");
}
