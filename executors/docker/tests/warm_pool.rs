//! The Docker executor's warm pool against a real engine at `DOCKER_HOST`.
//!
//! Each test skips, printing why, when no engine responds, unless `AGENTRUN_REQUIRE_RUNTIMES`
//! names `docker`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use agentrun_docker::{DockerConfig, DockerExecutor, WarmPoolStats, LABEL_WARM_POOL};
use agentrun_executor::{
    Executor, ExitStatus, JobEnd, JobOutcome, JobSpec, MessageKind, Prepared, LABEL_ENGINE,
};
use bollard::query_parameters::{KillContainerOptions, ListContainersOptions};
use common::{within, Fixture};

const MESSAGE: &[u8] = br#"{"type":"work","agentID":"a","payload":[],"job_id":1}"#;

fn job(job_id: u64) -> JobSpec {
    let mut job = JobSpec::new(job_id, MessageKind::Work, MESSAGE.to_vec());
    job.timeout = Duration::from_secs(60);
    job
}

fn pooled(size: usize) -> impl FnOnce(&mut DockerConfig) {
    move |config| config.warm_pool_size = size
}

/// Waits until the pool's counts satisfy `done`.
async fn wait_for_stats(
    executor: &DockerExecutor,
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

/// Lists the ids of this test's pooled containers.
async fn pooled_ids(fixture: &Fixture) -> Vec<String> {
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{LABEL_ENGINE}={}", fixture.instance),
                format!("{LABEL_WARM_POOL}=true"),
            ],
        )])),
        ..ListContainersOptions::default()
    };
    within(
        "list pooled containers",
        fixture.docker.list_containers(Some(options)),
    )
    .await
    .expect("list containers")
    .into_iter()
    .filter_map(|container| container.id)
    .collect()
}

/// Drops the executor, waits until none of the test's containers is left, and removes the
/// test's image.
async fn finish(fixture: Fixture, prepared: &Prepared) {
    let Fixture {
        executor,
        docker,
        instance,
        test,
        ..
    } = fixture;
    // A container still being started would appear after the list below.
    wait_for_stats(&executor, "starts to finish", |stats| stats.starting == 0).await;
    drop(executor);
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_ENGINE}={instance}")],
        )])),
        ..ListContainersOptions::default()
    };
    within("container removal after drop", async {
        loop {
            let left = docker
                .list_containers(Some(options.clone()))
                .await
                .expect("list containers");
            if left.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let image = Fixture::image(prepared);
    let removed = within(
        "remove image",
        docker.remove_image(
            image,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        ),
    )
    .await;
    if let Err(error) = removed {
        panic!("{test}: removing image {image} failed: {error}");
    }
}

async fn run(fixture: &Fixture, prepared: &Prepared, job: JobSpec) -> JobOutcome {
    within("run", fixture.executor.run(prepared, job))
        .await
        .expect("run")
}

/// Runs one cold job so that the pool fills, and waits until `size` containers are ready.
async fn fill(fixture: &Fixture, prepared: &Prepared, size: usize) -> JobOutcome {
    let cold = run(fixture, prepared, job(1)).await;
    assert_eq!(fixture.executor.warm_pool_stats().hits, 0);
    wait_for_stats(&fixture.executor, "pool to fill", |stats| {
        stats.ready >= size
    })
    .await;
    cold
}

/// A pooled job gives the same outcome as a cold one, and it runs in a container that was
/// waiting in the pool.
#[tokio::test]
async fn pooled_job_matches_cold_job() {
    let Some(mut fixture) = Fixture::connect_with("pool-same", pooled(1)).await else {
        return;
    };
    let package = fixture.script_package("agent", "echo started >&2\ncat\necho done\nexit 3\n");
    let prepared = fixture.prepare(&package).await;

    let cold = fill(&fixture, &prepared, 1).await;
    let waiting = pooled_ids(&fixture).await;
    let warm = run(&fixture, &prepared, job(2)).await;

    assert_eq!(fixture.executor.warm_pool_stats().hits, 1);
    let warm_id = warm.container_id.clone().expect("a container id");
    assert!(waiting.contains(&warm_id), "{warm_id} not in {waiting:?}");
    assert_eq!(warm.end, JobEnd::Exited);
    assert_eq!(warm.exit, ExitStatus::Code(3));
    assert_eq!(warm.end, cold.end);
    assert_eq!(warm.exit, cold.exit);
    assert_eq!(warm.stdout, cold.stdout);
    assert_eq!(warm.stderr_tail, cold.stderr_tail);
    let expected = [MESSAGE, b"done\n"].concat();
    assert_eq!(warm.stdout, expected);
    fixture.assert_no_container(2).await;
    finish(fixture, &prepared).await;
}

/// A pooled agent's environment equals a cold agent's, value for value, and a job whose
/// environment differs never gets a container made for another environment.
#[tokio::test]
async fn pooled_env_is_exact() {
    let Some(mut fixture) = Fixture::connect_with("pool-env", pooled(1)).await else {
        return;
    };
    // HOSTNAME is the container id, which differs between any two containers.
    let package = fixture.script_package("agent", "read -r line\nenv | grep -v '^HOSTNAME='\n");
    let prepared = fixture.prepare(&package).await;
    let env = vec![
        ("TOKEN".to_owned(), "a=b 'c' \"d\"\nline two ✓".to_owned()),
        ("EMPTY".to_owned(), String::new()),
    ];
    let with_env = |job_id| {
        let mut job = job(job_id);
        job.env = env.clone();
        job
    };

    let cold = run(&fixture, &prepared, with_env(1)).await;
    wait_for_stats(&fixture.executor, "pool to fill", |stats| stats.ready >= 1).await;
    let warm = run(&fixture, &prepared, with_env(2)).await;
    assert_eq!(fixture.executor.warm_pool_stats().hits, 1);
    assert_eq!(warm.stdout, cold.stdout);
    let text = String::from_utf8_lossy(&warm.stdout);
    assert!(text.contains("TOKEN=a=b 'c' \"d\"\nline two ✓\n"), "{text}");
    assert!(text.contains("EMPTY=\n"), "{text}");

    // Another value of one variable is another key: it runs cold.
    wait_for_stats(&fixture.executor, "pool to refill", |stats| {
        stats.ready >= 1
    })
    .await;
    let waiting = pooled_ids(&fixture).await;
    let mut other = with_env(3);
    other.env[0].1 = "other".to_owned();
    let outcome = run(&fixture, &prepared, other).await;
    let stats = fixture.executor.warm_pool_stats();
    assert_eq!(stats.hits, 1);
    let id = outcome.container_id.expect("a container id");
    assert!(!waiting.contains(&id), "{id} came from the pool");
    assert!(String::from_utf8_lossy(&outcome.stdout).contains("TOKEN=other\n"));
    finish(fixture, &prepared).await;
}

/// Output the agent writes before a job takes its container belongs to that job.
#[tokio::test]
async fn pooled_banner_goes_to_job() {
    let Some(mut fixture) = Fixture::connect_with("pool-banner", pooled(1)).await else {
        return;
    };
    let package = fixture.script_package("agent", "echo banner\necho warning >&2\ncat\n");
    let prepared = fixture.prepare(&package).await;

    fill(&fixture, &prepared, 1).await;
    let warm = run(&fixture, &prepared, job(2)).await;

    assert_eq!(fixture.executor.warm_pool_stats().hits, 1);
    assert_eq!(warm.stdout, [b"banner\n".as_slice(), MESSAGE].concat());
    assert_eq!(warm.stderr_tail, b"warning\n");
    finish(fixture, &prepared).await;
}

/// A job that takes a warm container leaves a replacement behind.
#[tokio::test]
async fn pooled_job_gets_replacement() {
    let Some(mut fixture) = Fixture::connect_with("pool-refill", pooled(2)).await else {
        return;
    };
    let package = fixture.script_package("agent", "cat\n");
    let prepared = fixture.prepare(&package).await;

    fill(&fixture, &prepared, 2).await;
    let before = pooled_ids(&fixture).await;
    assert_eq!(before.len(), 2, "{before:?}");
    let warm = run(&fixture, &prepared, job(2)).await;
    let taken = warm.container_id.expect("a container id");
    assert!(before.contains(&taken));

    wait_for_stats(&fixture.executor, "replacement", |stats| stats.ready >= 2).await;
    let after = pooled_ids(&fixture).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        !after.contains(&taken),
        "the taken container is still listed"
    );
    finish(fixture, &prepared).await;
}

/// A warm container that waits longer than the idle expiry is removed.
#[tokio::test]
async fn pool_idle_expiry_removes() {
    let Some(mut fixture) = Fixture::connect_with("pool-expiry", |config| {
        config.warm_pool_size = 1;
        config.warm_pool_idle_secs = 1;
    })
    .await
    else {
        return;
    };
    let package = fixture.script_package("agent", "cat\n");
    let prepared = fixture.prepare(&package).await;

    fill(&fixture, &prepared, 1).await;
    assert_eq!(pooled_ids(&fixture).await.len(), 1);
    wait_for_stats(&fixture.executor, "expiry", |stats| stats.ready == 0).await;
    within("expired container removal", async {
        while !pooled_ids(&fixture).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    finish(fixture, &prepared).await;
}

/// A warm container that was killed while it waited is discarded, and the next job runs in
/// another container with the normal outcome.
#[tokio::test]
async fn pool_discards_dead_container() {
    let Some(mut fixture) = Fixture::connect_with("pool-dead", pooled(1)).await else {
        return;
    };
    let package = fixture.script_package("agent", "cat\n");
    let prepared = fixture.prepare(&package).await;

    fill(&fixture, &prepared, 1).await;
    let waiting = pooled_ids(&fixture).await;
    assert_eq!(waiting.len(), 1);
    let options = KillContainerOptions {
        signal: "SIGKILL".to_owned(),
    };
    within(
        "kill",
        fixture.docker.kill_container(&waiting[0], Some(options)),
    )
    .await
    .expect("kill the warm container");
    wait_for_stats(&fixture.executor, "discard", |stats| stats.discarded >= 1).await;

    let outcome = run(&fixture, &prepared, job(2)).await;
    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(outcome.stdout, MESSAGE);
    assert_ne!(outcome.container_id.as_ref(), Some(&waiting[0]));
    assert_eq!(fixture.executor.warm_pool_stats().hits, 0);
    finish(fixture, &prepared).await;
}

/// An agent that exits before it gets a message never serves a job from the pool.
#[tokio::test]
async fn pool_skips_agent_that_exits_early() {
    let Some(mut fixture) = Fixture::connect_with("pool-early", pooled(1)).await else {
        return;
    };
    let package = fixture.script_package("agent", "echo early\n");
    let prepared = fixture.prepare(&package).await;

    run(&fixture, &prepared, job(1)).await;
    wait_for_stats(&fixture.executor, "discard", |stats| stats.discarded >= 1).await;
    let outcome = run(&fixture, &prepared, job(2)).await;

    assert_eq!(outcome.stdout, b"early\n");
    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(fixture.executor.warm_pool_stats().hits, 0);
    finish(fixture, &prepared).await;
}

/// Dropping the executor removes every container it made, pooled ones included.
#[tokio::test]
async fn pool_drop_leaves_no_container() {
    let Some(mut fixture) = Fixture::connect_with("pool-drop", pooled(2)).await else {
        return;
    };
    let package = fixture.script_package("agent", "cat\n");
    let prepared = fixture.prepare(&package).await;

    fill(&fixture, &prepared, 2).await;
    assert_eq!(pooled_ids(&fixture).await.len(), 2);
    finish(fixture, &prepared).await;
}

/// `sweep` removes warm containers, since they belong to no job.
#[tokio::test]
async fn sweep_removes_warm_containers() {
    let Some(mut fixture) = Fixture::connect_with("pool-sweep", pooled(1)).await else {
        return;
    };
    let package = fixture.script_package("agent", "cat\n");
    let prepared = fixture.prepare(&package).await;

    fill(&fixture, &prepared, 1).await;
    let waiting = pooled_ids(&fixture).await;
    let removed = within("sweep", fixture.executor.sweep(&[]))
        .await
        .expect("sweep");
    assert_eq!(removed, waiting);
    finish(fixture, &prepared).await;
}
