use std::collections::HashMap;
use std::path::PathBuf;

use agentrun_executor::{Prepared, Target};
use uuid::Uuid;

use super::*;
use crate::forms::Context;
use crate::manifest::Manifest;
use crate::protocol::agent_id_for;

const SECRET: &str = "hooks.example/T000/B000/very-secret-value";

fn key() -> String {
    EnvCipher::generate_key_hex()
}

fn open(dir: &std::path::Path, key: &str) -> Store {
    let cipher = EnvCipher::from_key_material(key.as_bytes()).expect("valid key");
    Store::open(&dir.join("agentrun.db"), cipher).expect("store opens")
}

fn manifest(name: &str) -> Manifest {
    Manifest::from_toml_str(&format!(
        "name = {name:?}\nsection = \"collaborate\"\n[[fields]]\nname = \"message\"\n\
         [env]\nurl = \"https://{SECRET}\"\n"
    ))
    .expect("valid manifest")
}

fn new_integration(name: &str) -> NewIntegration {
    NewIntegration {
        agent_id: agent_id_for(name),
        manifest: manifest(name),
        digest: "d1".to_owned(),
        package_root: PathBuf::from(format!("/data/packages/{name}")),
    }
}

fn prepared(name: &str) -> Prepared {
    Prepared {
        executor: "subprocess".to_owned(),
        integration: name.to_owned(),
        agent_id: agent_id_for(name).to_string(),
        digest: "d1".to_owned(),
        target: Target::Command {
            argv: vec!["/bin/true".to_owned()],
            working_dir: PathBuf::from("/"),
        },
        cache_hit: false,
    }
}

fn new_job(id: u64, name: &str) -> NewJob {
    NewJob {
        id,
        agent_id: agent_id_for(name),
        values: vec![("message".to_owned(), format!("job {id}"))],
        context: Context {
            user_name: Some("alice".to_owned()),
            ..Context::default()
        },
    }
}

async fn ready(store: &Store, name: &str) {
    store
        .insert_integration(new_integration(name))
        .await
        .expect("insert");
    let changed = store
        .finish_build(agent_id_for(name), "d1".to_owned(), Ok(prepared(name)))
        .await
        .expect("finish build");
    assert!(changed);
}

#[tokio::test]
async fn integration_round_trips_with_env_apart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());

    let record = store
        .insert_integration(new_integration("Slack"))
        .await
        .expect("insert");
    assert_eq!(record.name, "Slack");
    assert_eq!(record.state, BuildState::Building);
    assert!(
        record.manifest.env.is_empty(),
        "env stays out of the manifest"
    );
    assert_eq!(
        record.env,
        vec![("url".to_owned(), format!("https://{SECRET}"))]
    );

    let listed = store.integrations().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].agent_id, agent_id_for("slack"));
}

/// Reading integrations reuses the manifest parsed at insert, replacement or the first read:
/// lists do not validate manifests (and compile their regexes) again.
#[tokio::test]
async fn reads_do_not_parse_manifests_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = key();
    let store = open(dir.path(), &key);
    ready(&store, "a").await;
    for _ in 0..3 {
        store.integrations().await.expect("list");
        store
            .integration(agent_id_for("a"))
            .await
            .expect("get")
            .expect("exists");
    }
    assert_eq!(store.manifest_parses(), 0);

    let mut replacement = manifest("a");
    replacement.take_user_input = false;
    store
        .replace_package(
            agent_id_for("a"),
            replacement,
            "d2".to_owned(),
            PathBuf::from("/p"),
        )
        .await
        .expect("replace")
        .expect("exists");
    let record = store
        .integration(agent_id_for("a"))
        .await
        .expect("get")
        .expect("exists");
    assert!(!record.manifest.take_user_input);
    assert_eq!(store.manifest_parses(), 0);

    // A new process parses each stored manifest once.
    drop(store);
    let store = open(dir.path(), &key);
    for _ in 0..3 {
        let records = store.integrations().await.expect("list");
        assert!(!records[0].manifest.take_user_input);
    }
    assert_eq!(store.manifest_parses(), 1);
}

#[tokio::test]
async fn integration_name_unique_ignoring_case() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    store
        .insert_integration(new_integration("Slack"))
        .await
        .expect("first insert");

    let error = store
        .insert_integration(new_integration("SLACK"))
        .await
        .expect_err("duplicate");
    match error {
        StoreError::DuplicateName { existing } => assert_eq!(existing, "Slack"),
        other => panic!("expected DuplicateName, got {other}"),
    }
}

/// No env value appears anywhere in the database files.
#[tokio::test]
async fn env_values_encrypted_on_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    store
        .insert_integration(new_integration("Slack"))
        .await
        .expect("insert");
    store
        .update_env(
            agent_id_for("slack"),
            vec![("TOKEN".to_owned(), Some(format!("{SECRET}-2")))],
        )
        .await
        .expect("update env")
        .expect("integration exists");
    drop(store);

    // The store thread closes the connection after the last handle is gone, and SQLite then
    // moves the WAL into the database file and deletes it. Reading before that could race with
    // the deletion.
    let wal = dir.path().join("agentrun.db-wal");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while wal.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not close the database within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    for entry in std::fs::read_dir(dir.path()).expect("list data dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read database file");
        let found = bytes
            .windows(SECRET.len())
            .any(|window| window == SECRET.as_bytes());
        assert!(!found, "{} contains an env value", path.display());
    }
}

#[tokio::test]
async fn reopen_with_other_key_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    drop(open(dir.path(), &key()));

    let cipher = EnvCipher::from_key_material(key().as_bytes()).expect("valid key");
    let error = Store::open(&dir.path().join("agentrun.db"), cipher).expect_err("wrong key");
    assert!(matches!(error, StoreError::WrongKey { .. }), "{error}");
}

#[tokio::test]
async fn env_patch_sets_and_removes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    store
        .insert_integration(new_integration("Slack"))
        .await
        .expect("insert");

    let record = store
        .update_env(
            agent_id_for("slack"),
            vec![
                ("A".to_owned(), Some("1".to_owned())),
                ("url".to_owned(), None),
                ("B".to_owned(), Some("2".to_owned())),
                ("A".to_owned(), Some("3".to_owned())),
            ],
        )
        .await
        .expect("update env")
        .expect("integration exists");
    assert_eq!(
        record.env,
        vec![
            ("A".to_owned(), "3".to_owned()),
            ("B".to_owned(), "2".to_owned())
        ]
    );

    let missing = store
        .update_env(Uuid::from_u128(1), Vec::new())
        .await
        .expect("update env");
    assert!(missing.is_none());
}

/// A patch of 100,000 variables keeps their order; a second patch updates one in place,
/// removes one and appends one.
#[tokio::test]
async fn env_patch_of_many_variables() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    store
        .insert_integration(new_integration("Slack"))
        .await
        .expect("insert");
    let names: Vec<String> = (0..100_000).map(|index| format!("V{index}")).collect();
    let patch = names
        .iter()
        .map(|name| (name.clone(), Some(String::new())))
        .collect();
    let record = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        store.update_env(agent_id_for("slack"), patch),
    )
    .await
    .expect("the update ends within 120 s")
    .expect("update env")
    .expect("integration exists");
    let keys: Vec<&str> = record.env.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys.len(), 100_001);
    assert_eq!(keys[0], "url");
    assert_eq!(keys[1], "V0");
    assert_eq!(keys[100_000], "V99999");

    let record = store
        .update_env(
            agent_id_for("slack"),
            vec![
                ("V5".to_owned(), Some("five".to_owned())),
                ("V0".to_owned(), None),
                ("NEW".to_owned(), Some("new".to_owned())),
            ],
        )
        .await
        .expect("update env")
        .expect("integration exists");
    assert_eq!(record.env.len(), 100_001);
    assert_eq!(record.env[0].0, "url");
    assert_eq!(record.env[1].0, "V1");
    assert_eq!(record.env[5], ("V5".to_owned(), "five".to_owned()));
    assert_eq!(record.env[100_000], ("NEW".to_owned(), "new".to_owned()));
}

#[tokio::test]
async fn replace_package_keeps_env_and_rebuilds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    ready(&store, "Slack").await;
    store
        .update_env(
            agent_id_for("slack"),
            vec![("url".to_owned(), Some("patched".to_owned()))],
        )
        .await
        .expect("update env");

    let mut replacement = manifest("Slack");
    replacement
        .env
        .insert("EXTRA".to_owned(), "from-manifest".to_owned());
    // A stored value wins over the replacement manifest's value for the same key.
    replacement
        .env
        .insert("url".to_owned(), "manifest-default".to_owned());
    let previous = store
        .replace_package(
            agent_id_for("slack"),
            replacement,
            "d2".to_owned(),
            PathBuf::from("/data/packages/slack/d2"),
        )
        .await
        .expect("replace")
        .expect("integration exists");
    assert_eq!(previous.digest, "d1");

    let record = store
        .integration(agent_id_for("slack"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(record.state, BuildState::Building);
    assert_eq!(record.prepared, None);
    assert_eq!(
        record.env,
        vec![
            ("url".to_owned(), "patched".to_owned()),
            ("EXTRA".to_owned(), "from-manifest".to_owned())
        ]
    );

    // A build of the old package finishing late must not mark the new one ready.
    let stale = store
        .finish_build(
            agent_id_for("slack"),
            "d1".to_owned(),
            Ok(prepared("Slack")),
        )
        .await
        .expect("finish build");
    assert!(!stale);
}

#[tokio::test]
async fn claim_takes_jobs_in_id_order_within_limits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    ready(&store, "a").await;
    ready(&store, "b").await;
    for (id, name) in [(1, "a"), (2, "a"), (3, "b"), (4, "a"), (5, "b")] {
        store
            .insert_job(new_job(id, name), 100)
            .await
            .expect("insert job")
            .expect("integration exists");
    }

    let claimed = store
        .claim_jobs(ClaimLimits {
            free: 10,
            per_integration: 2,
            running: HashMap::new(),
        })
        .await
        .expect("claim");
    let ids: Vec<u64> = claimed.iter().map(|job| job.id).collect();
    assert_eq!(ids, [1, 2, 3, 5]);
    assert!(claimed.iter().all(|job| job.state == JobState::Running));
    assert!(claimed.iter().all(|job| job.started_ms.is_some()));

    let again = store
        .claim_jobs(ClaimLimits {
            free: 10,
            per_integration: 3,
            running: HashMap::from([(agent_id_for("a"), 2), (agent_id_for("b"), 2)]),
        })
        .await
        .expect("claim");
    let ids: Vec<u64> = again.iter().map(|job| job.id).collect();
    assert_eq!(ids, [4]);
}

#[tokio::test]
async fn claim_respects_free_slots() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    ready(&store, "a").await;
    for id in 1..=3 {
        store
            .insert_job(new_job(id, "a"), 100)
            .await
            .expect("insert job");
    }
    let claimed = store
        .claim_jobs(ClaimLimits {
            free: 1,
            per_integration: 5,
            running: HashMap::new(),
        })
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, 1);
}

#[tokio::test]
async fn claim_skips_integrations_not_ready() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    store
        .insert_integration(new_integration("building"))
        .await
        .expect("insert");
    store
        .insert_job(new_job(1, "building"), 100)
        .await
        .expect("insert job");
    let claimed = store
        .claim_jobs(ClaimLimits {
            free: 4,
            per_integration: 4,
            running: HashMap::new(),
        })
        .await
        .expect("claim");
    assert!(claimed.is_empty());
}

#[tokio::test]
async fn job_for_missing_integration_is_not_inserted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    let inserted = store
        .insert_job(new_job(1, "nobody"), 100)
        .await
        .expect("insert job");
    assert!(inserted.is_none());
    assert_eq!(store.job(1).await.expect("get"), None);
}

#[tokio::test]
async fn queue_full_rejects_job() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    ready(&store, "a").await;
    store
        .insert_job(new_job(1, "a"), 1)
        .await
        .expect("first job fits");
    let error = store
        .insert_job(new_job(2, "a"), 1)
        .await
        .expect_err("queue full");
    assert!(
        matches!(error, StoreError::QueueFull { max_queued: 1 }),
        "{error}"
    );
}

#[tokio::test]
async fn finish_and_cancel_follow_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    ready(&store, "a").await;
    store.insert_job(new_job(1, "a"), 10).await.expect("insert");
    store.insert_job(new_job(2, "a"), 10).await.expect("insert");

    // A queued job cannot be finished, only cancelled.
    let finish = JobFinish {
        state: JobState::Succeeded,
        result: Some(serde_json::json!({"status": "succeeded"})),
        error: None,
        exit_code: Some(0),
        stderr_tail: Some(String::new()),
    };
    assert!(!store.finish_job(1, finish.clone()).await.expect("finish"));

    store
        .claim_jobs(ClaimLimits {
            free: 1,
            per_integration: 1,
            running: HashMap::new(),
        })
        .await
        .expect("claim");
    assert!(store.finish_job(1, finish.clone()).await.expect("finish"));
    assert!(
        !store.finish_job(1, finish).await.expect("finish"),
        "a finished job does not finish twice"
    );
    let job = store.job(1).await.expect("get").expect("exists");
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.exit_code, Some(0));
    assert!(job.finished_ms.is_some());

    let cancelled = store
        .cancel_queued_job(2, "cancelled through the API".to_owned())
        .await
        .expect("cancel")
        .expect("was queued");
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(store
        .cancel_queued_job(1, "again".to_owned())
        .await
        .expect("cancel")
        .is_none());
}

/// A committed job is still there after the store is dropped and opened again.
#[tokio::test]
async fn jobs_survive_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = key();
    let store = open(dir.path(), &key);
    ready(&store, "a").await;
    let inserted = store
        .insert_job(new_job(42, "a"), 10)
        .await
        .expect("insert")
        .expect("integration exists");
    drop(store);

    let store = open(dir.path(), &key);
    let job = store.job(42).await.expect("get").expect("survived");
    assert_eq!(job, inserted);
    assert_eq!(
        job.values,
        vec![("message".to_owned(), "job 42".to_owned())]
    );
    assert_eq!(job.context.user_name.as_deref(), Some("alice"));
    assert_eq!(store.max_job_id().await.expect("max id"), 42);
}

#[tokio::test]
async fn list_filters_and_pages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    ready(&store, "a").await;
    ready(&store, "b").await;
    for (id, name) in [(1, "a"), (2, "b"), (3, "a"), (4, "a")] {
        store
            .insert_job(new_job(id, name), 10)
            .await
            .expect("insert");
    }
    store
        .cancel_queued_job(3, "x".to_owned())
        .await
        .expect("cancel");

    let page = |filter: JobFilter| {
        let store = store.clone();
        async move {
            store
                .jobs(filter)
                .await
                .expect("list")
                .iter()
                .map(|job| job.id)
                .collect::<Vec<_>>()
        }
    };
    let all = JobFilter {
        limit: 10,
        ..JobFilter::default()
    };
    assert_eq!(page(all.clone()).await, [4, 3, 2, 1]);
    assert_eq!(
        page(JobFilter {
            agent_id: Some(agent_id_for("a")),
            ..all.clone()
        })
        .await,
        [4, 3, 1]
    );
    assert_eq!(
        page(JobFilter {
            state: Some(JobState::Queued),
            ..all.clone()
        })
        .await,
        [4, 2, 1]
    );
    assert_eq!(
        page(JobFilter {
            before: Some(3),
            limit: 1,
            ..all
        })
        .await,
        [2]
    );
}

#[tokio::test]
async fn delete_cancels_queued_jobs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    ready(&store, "a").await;
    store.insert_job(new_job(1, "a"), 10).await.expect("insert");

    let (record, cancelled) = store
        .delete_integration(agent_id_for("a"))
        .await
        .expect("delete")
        .expect("existed");
    assert_eq!(record.name, "a");
    assert_eq!(cancelled, 1);
    let job = store.job(1).await.expect("get").expect("job kept");
    assert_eq!(job.state, JobState::Cancelled);
    assert!(store
        .integration(agent_id_for("a"))
        .await
        .expect("get")
        .is_none());
}

/// An agentID is recorded while its integration exists, and afterwards through its jobs.
#[tokio::test]
async fn agent_recorded_by_integration_or_jobs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    ready(&store, "a").await;
    ready(&store, "b").await;
    store.insert_job(new_job(1, "a"), 10).await.expect("insert");
    store
        .delete_integration(agent_id_for("a"))
        .await
        .expect("delete")
        .expect("existed");

    let recorded = |name: &'static str| {
        let store = store.clone();
        async move {
            store
                .is_agent_recorded(agent_id_for(name))
                .await
                .expect("query")
        }
    };
    assert!(recorded("a").await, "deleted, with a job");
    assert!(recorded("b").await, "registered, without jobs");
    assert!(!recorded("c").await, "never registered");
}

#[tokio::test]
async fn counts_group_by_integration_and_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    ready(&store, "a").await;
    store.insert_job(new_job(1, "a"), 10).await.expect("insert");
    store.insert_job(new_job(2, "a"), 10).await.expect("insert");
    let counts = store.job_counts().await.expect("counts");
    assert_eq!(
        counts,
        vec![StateCount {
            integration: "a".to_owned(),
            state: JobState::Queued,
            count: 2
        }]
    );
}

#[tokio::test]
async fn health_is_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    ready(&store, "a").await;
    store
        .set_health(
            agent_id_for("a"),
            HealthRecord {
                checked_ms: 5,
                healthy: false,
                report: serde_json::json!({"error": "no heartbeat"}),
            },
        )
        .await
        .expect("set health");
    let record = store
        .integration(agent_id_for("a"))
        .await
        .expect("get")
        .expect("exists");
    let health = record.health.expect("health recorded");
    assert!(!health.healthy);
    assert_eq!(health.checked_ms, 5);
    assert_eq!(health.report["error"], "no heartbeat");
}

#[tokio::test]
async fn fail_queued_jobs_ends_only_queued() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    ready(&store, "a").await;
    ready(&store, "b").await;
    store.insert_job(new_job(1, "a"), 10).await.expect("insert");
    store.insert_job(new_job(2, "a"), 10).await.expect("insert");
    store.insert_job(new_job(3, "b"), 10).await.expect("insert");
    store
        .claim_jobs(ClaimLimits {
            free: 1,
            per_integration: 1,
            running: HashMap::new(),
        })
        .await
        .expect("claim job 1");

    let failed = store
        .fail_queued_jobs(agent_id_for("a"), "build failed".to_owned())
        .await
        .expect("fail queued");
    assert_eq!(failed, [2]);
    let job = store.job(2).await.expect("get").expect("exists");
    assert_eq!(job.state, JobState::Error);
    assert_eq!(job.error.as_deref(), Some("build failed"));
    let running = store.job(1).await.expect("get").expect("exists");
    assert_eq!(running.state, JobState::Running);
    let other = store.job(3).await.expect("get").expect("exists");
    assert_eq!(other.state, JobState::Queued);
}

/// The `Debug` output of a record never shows env values.
#[tokio::test]
async fn record_debug_hides_env_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), &key());
    let record = store
        .insert_integration(new_integration("Slack"))
        .await
        .expect("insert");
    let text = format!("{record:?}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("url"), "{text}");
}
