//! The Podman executor's warm pool against the real Podman on this machine.
//!
//! Each test skips, printing why, when Podman is missing, unless `AGENTRUN_REQUIRE_RUNTIMES`
//! names `podman`.

mod common;

use std::time::Duration;

use agentrun_executor::{Executor, ExitStatus, JobEnd, JobSpec, Prepared};
use agentrun_podman::{PodmanConfig, PodmanExecutor, WarmPoolStats, LABEL_WARM_POOL};
use common::{assert_no_containers, job, podman, prepare, private_executor, run, within};

const MESSAGE: &[u8] = br#"{"type":"work","agentID":"a","payload":[],"job_id":1}"#;

fn pooled_config(size: usize) -> PodmanConfig {
    PodmanConfig {
        warm_pool_size: size,
        ..common::test_config()
    }
}

/// Waits until the pool's counts satisfy `done`.
async fn wait_for_stats(
    executor: &PodmanExecutor,
    what: &str,
    done: impl Fn(&WarmPoolStats) -> bool,
) -> WarmPoolStats {
    within(what, async {
        loop {
            let stats = executor.warm_pool_stats();
            if done(&stats) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Returns the ids of the instance's pooled containers.
fn pooled_ids(instance: &str) -> Vec<String> {
    podman(&[
        "ps",
        "--all",
        "--quiet",
        "--no-trunc",
        "--filter",
        &format!("label=io.agentrun.engine={instance}"),
        "--filter",
        &format!("label={LABEL_WARM_POOL}=true"),
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

fn work(job_id: u64) -> JobSpec {
    job(job_id, MESSAGE)
}

/// An executor with a pool of `size`, a package running `script`, and its prepared image.
async fn setup(size: usize, script: &str, dir: &tempfile::TempDir) -> (PodmanExecutor, Prepared) {
    let executor = private_executor(pooled_config(size)).await;
    let package = common::script_package(dir.path(), "pool", script);
    let prepared = prepare(&executor, &package).await;
    (executor, prepared)
}

/// Runs one cold job so that the pool fills, and waits until `size` containers are ready.
async fn fill(executor: &PodmanExecutor, prepared: &Prepared, size: usize) {
    run(executor, prepared, work(1)).await;
    assert_eq!(executor.warm_pool_stats().hits, 0);
    wait_for_stats(executor, "pool to fill", |stats| stats.ready >= size).await;
}

/// Drops the executor once no container is starting, and checks that it left none behind.
async fn finish(executor: PodmanExecutor) {
    wait_for_stats(&executor, "starts to finish", |stats| stats.starting == 0).await;
    let instance = executor.config().instance.clone();
    drop(executor);
    assert_no_containers(&instance).await;
}

/// A pooled job gives the same outcome as a cold one, in a container that waited in the pool.
#[tokio::test]
async fn pooled_job_matches_cold_job() {
    require_podman!("pooled_job_matches_cold_job");
    let dir = tempfile::tempdir().expect("temp dir");
    let (executor, prepared) = setup(1, "echo started >&2\ncat\necho done\nexit 3\n", &dir).await;
    let instance = executor.config().instance.clone();

    let cold = run(&executor, &prepared, work(1)).await;
    wait_for_stats(&executor, "pool to fill", |stats| stats.ready >= 1).await;
    let waiting = pooled_ids(&instance);
    let warm = run(&executor, &prepared, work(2)).await;

    assert_eq!(executor.warm_pool_stats().hits, 1);
    let warm_id = warm.container_id.clone().expect("a container id");
    assert!(waiting.contains(&warm_id), "{warm_id} not in {waiting:?}");
    assert_eq!(warm.end, JobEnd::Exited);
    assert_eq!(warm.exit, ExitStatus::Code(3));
    assert_eq!(warm.exit, cold.exit);
    assert_eq!(warm.stdout, cold.stdout);
    assert_eq!(warm.stderr_tail, cold.stderr_tail);
    assert_eq!(warm.stdout, [MESSAGE, b"done\n"].concat());
    finish(executor).await;
}

/// A pooled agent's environment equals a cold agent's, and a job whose environment differs
/// never gets a container made for another environment.
#[tokio::test]
async fn pooled_env_is_exact() {
    require_podman!("pooled_env_is_exact");
    let dir = tempfile::tempdir().expect("temp dir");
    // HOSTNAME is the container id, which differs between any two containers.
    let script = "read -r line\nenv | grep -v '^HOSTNAME='\n";
    let (executor, prepared) = setup(1, script, &dir).await;
    let instance = executor.config().instance.clone();
    let env = vec![
        ("TOKEN".to_owned(), "a=b 'c' \"d\"\nline two ✓".to_owned()),
        ("EMPTY".to_owned(), String::new()),
    ];
    let with_env = |job_id| {
        let mut job = work(job_id);
        job.env = env.clone();
        job
    };

    let cold = run(&executor, &prepared, with_env(1)).await;
    wait_for_stats(&executor, "pool to fill", |stats| stats.ready >= 1).await;
    let warm = run(&executor, &prepared, with_env(2)).await;
    assert_eq!(executor.warm_pool_stats().hits, 1);
    assert_eq!(warm.stdout, cold.stdout);
    let text = String::from_utf8_lossy(&warm.stdout);
    assert!(text.contains("TOKEN=a=b 'c' \"d\"\nline two ✓\n"), "{text}");
    assert!(text.contains("EMPTY=\n"), "{text}");

    wait_for_stats(&executor, "pool to refill", |stats| stats.ready >= 1).await;
    let waiting = pooled_ids(&instance);
    let mut other = with_env(3);
    other.env[0].1 = "other".to_owned();
    let outcome = run(&executor, &prepared, other).await;
    assert_eq!(executor.warm_pool_stats().hits, 1);
    let id = outcome.container_id.expect("a container id");
    assert!(!waiting.contains(&id), "{id} came from the pool");
    assert!(String::from_utf8_lossy(&outcome.stdout).contains("TOKEN=other\n"));
    finish(executor).await;
}

/// Output the agent writes before a job takes its container belongs to that job.
#[tokio::test]
async fn pooled_banner_goes_to_job() {
    require_podman!("pooled_banner_goes_to_job");
    let dir = tempfile::tempdir().expect("temp dir");
    let (executor, prepared) = setup(1, "echo banner\necho warning >&2\ncat\n", &dir).await;

    fill(&executor, &prepared, 1).await;
    let warm = run(&executor, &prepared, work(2)).await;

    assert_eq!(executor.warm_pool_stats().hits, 1);
    assert_eq!(warm.stdout, [b"banner\n".as_slice(), MESSAGE].concat());
    assert_eq!(warm.stderr_tail, b"warning\n");
    finish(executor).await;
}

/// A job that takes a warm container leaves a replacement behind.
#[tokio::test]
async fn pooled_job_gets_replacement() {
    require_podman!("pooled_job_gets_replacement");
    let dir = tempfile::tempdir().expect("temp dir");
    let (executor, prepared) = setup(2, "cat\n", &dir).await;
    let instance = executor.config().instance.clone();

    fill(&executor, &prepared, 2).await;
    let before = pooled_ids(&instance);
    assert_eq!(before.len(), 2, "{before:?}");
    let warm = run(&executor, &prepared, work(2)).await;
    let taken = warm.container_id.expect("a container id");
    assert!(before.contains(&taken));

    wait_for_stats(&executor, "replacement", |stats| stats.ready >= 2).await;
    let after = pooled_ids(&instance);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        !after.contains(&taken),
        "the taken container is still listed"
    );
    finish(executor).await;
}

/// A warm container that waits longer than the idle expiry is removed.
#[tokio::test]
async fn pool_idle_expiry_removes() {
    require_podman!("pool_idle_expiry_removes");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = PodmanConfig {
        warm_pool_idle_secs: 1,
        ..pooled_config(1)
    };
    let executor = private_executor(config).await;
    let instance = executor.config().instance.clone();
    let package = common::script_package(dir.path(), "pool", "cat\n");
    let prepared = prepare(&executor, &package).await;

    fill(&executor, &prepared, 1).await;
    assert_eq!(pooled_ids(&instance).len(), 1);
    wait_for_stats(&executor, "expiry", |stats| stats.ready == 0).await;
    within("expired container removal", async {
        while !pooled_ids(&instance).is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    finish(executor).await;
}

/// A warm container that was killed while it waited is discarded, and the next job runs in
/// another container with the normal outcome.
#[tokio::test]
async fn pool_discards_dead_container() {
    require_podman!("pool_discards_dead_container");
    let dir = tempfile::tempdir().expect("temp dir");
    let (executor, prepared) = setup(1, "cat\n", &dir).await;
    let instance = executor.config().instance.clone();

    fill(&executor, &prepared, 1).await;
    let waiting = pooled_ids(&instance);
    assert_eq!(waiting.len(), 1);
    podman(&["kill", &waiting[0]]);
    wait_for_stats(&executor, "discard", |stats| stats.discarded >= 1).await;

    let outcome = run(&executor, &prepared, work(2)).await;
    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(outcome.stdout, MESSAGE);
    assert_ne!(outcome.container_id.as_ref(), Some(&waiting[0]));
    assert_eq!(executor.warm_pool_stats().hits, 0);
    finish(executor).await;
}

/// An agent that exits before it gets a message never serves a job from the pool.
#[tokio::test]
async fn pool_skips_agent_that_exits_early() {
    require_podman!("pool_skips_agent_that_exits_early");
    let dir = tempfile::tempdir().expect("temp dir");
    let (executor, prepared) = setup(1, "echo early\n", &dir).await;

    run(&executor, &prepared, work(1)).await;
    wait_for_stats(&executor, "discard", |stats| stats.discarded >= 1).await;
    let outcome = run(&executor, &prepared, work(2)).await;

    assert_eq!(outcome.stdout, b"early\n");
    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(executor.warm_pool_stats().hits, 0);
    finish(executor).await;
}

/// Dropping the executor removes every container it made, pooled ones included.
#[tokio::test]
async fn pool_drop_leaves_no_container() {
    require_podman!("pool_drop_leaves_no_container");
    let dir = tempfile::tempdir().expect("temp dir");
    let (executor, prepared) = setup(2, "cat\n", &dir).await;
    let instance = executor.config().instance.clone();

    fill(&executor, &prepared, 2).await;
    assert_eq!(pooled_ids(&instance).len(), 2);
    finish(executor).await;
}

/// `sweep` removes warm containers, since they belong to no job.
#[tokio::test]
async fn sweep_removes_warm_containers() {
    require_podman!("sweep_removes_warm_containers");
    let dir = tempfile::tempdir().expect("temp dir");
    let (executor, prepared) = setup(1, "cat\n", &dir).await;
    let instance = executor.config().instance.clone();

    fill(&executor, &prepared, 1).await;
    let mut waiting = pooled_ids(&instance);
    let mut removed = within("sweep", executor.sweep(&[])).await.expect("sweep");
    waiting.sort();
    removed.sort();
    assert_eq!(removed, waiting);
    finish(executor).await;
}
