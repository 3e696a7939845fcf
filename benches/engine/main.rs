//! The engine benchmark: per-job latency and throughput of every executor, side by side with
//! what a user would run instead, in one run.
//!
//! Run it with `cargo bench --bench engine`. Counts come from flags (after `--`) or their
//! `AGENTRUN_BENCH_*` twins; `cargo bench --bench engine -- --help` lists them. A runtime that
//! does not respond is skipped with the reason. Docker is found through `DOCKER_HOST`; Podman
//! through its usual sockets, else a private `podman system service`. With `RUST_LOG` set
//! (such as `RUST_LOG=agentrun_docker=debug`), the executors' per-step timings go to stderr.
//!
//! Each job goes through the [`Dispatcher`], as a job of the CLI or the service does: the form is
//! resolved, the message built, the executor runs the agent and the reply is parsed. Each job
//! is checked: a job that does not return the sent text fails the benchmark.
//!
//! The memory rows come from the release `agentrun serve` binary in a process of its own (see
//! the `memory` module), since this process holds every executor and the measured jobs.

#[path = "../../tests/common/testagent.rs"]
mod testagent;

mod baseline;
mod machine;
mod memory;
mod report;
mod stats;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentrun::cli::{load_package, LoadedPackage};
use agentrun::dispatcher::{DispatchDefaults, Dispatcher, JobStatus, WorkRequest};
use agentrun::executor::{Executor, Prepared, Target};
use agentrun::protocol::Request;
use agentrun_docker::{DockerConfig, DockerExecutor};
use agentrun_podman::{PodmanConfig, PodmanExecutor};
use agentrun_subprocess::SubprocessExecutor;
use clap::Parser;

use crate::baseline::BaselineCommand;
use crate::report::{BuildRow, Report, Row};
use crate::stats::{Latency, Throughput};

/// Text every job sends and expects back.
const MESSAGE_TEXT: &str = "hello from the benchmark";

/// Measures agentrun's per-job latency and throughput against direct spawns and the runtimes'
/// CLIs.
#[derive(Debug, Parser)]
#[command(name = "engine")]
struct Args {
    /// Sequential jobs measured per container row (latency median and p99).
    #[arg(long, env = "AGENTRUN_BENCH_SAMPLES", default_value_t = 200)]
    samples: usize,

    /// Sequential jobs measured per subprocess row.
    #[arg(
        long,
        env = "AGENTRUN_BENCH_SUBPROCESS_SAMPLES",
        default_value_t = 2000
    )]
    subprocess_samples: usize,

    /// Jobs per container throughput figure.
    #[arg(long, env = "AGENTRUN_BENCH_JOBS", default_value_t = 200)]
    jobs: usize,

    /// Jobs per subprocess throughput figure.
    #[arg(long, env = "AGENTRUN_BENCH_SUBPROCESS_JOBS", default_value_t = 5000)]
    subprocess_jobs: usize,

    /// Jobs in flight for the throughput figures.
    #[arg(long, env = "AGENTRUN_BENCH_CONCURRENCY", default_value_t = 8)]
    concurrency: usize,

    /// Unmeasured jobs before each latency series.
    #[arg(long, env = "AGENTRUN_BENCH_WARMUP", default_value_t = 5)]
    warmup: usize,

    /// Cache-hit builds (prepares of an unchanged package) measured per row.
    #[arg(long, env = "AGENTRUN_BENCH_BUILDS", default_value_t = 20)]
    builds: usize,

    /// Executors to measure, comma-separated.
    #[arg(
        long,
        env = "AGENTRUN_BENCH_EXECUTORS",
        value_delimiter = ',',
        default_value = "subprocess,docker,podman"
    )]
    executors: Vec<String>,

    /// Agents to measure, comma-separated: `testagent` (static Rust binary FROM scratch) and
    /// `python` (examples/echo on python:3.11-slim).
    #[arg(
        long,
        env = "AGENTRUN_BENCH_AGENTS",
        value_delimiter = ',',
        default_value = "testagent,python"
    )]
    agents: Vec<String>,

    /// Network mode of every container, the engine's and the CLI's.
    #[arg(long, env = "AGENTRUN_BENCH_NETWORK", default_value = "none")]
    network: String,

    /// Whether the engine's containers run their agent under an init process (`init` of the
    /// Docker and Podman configuration).
    #[arg(long, env = "AGENTRUN_BENCH_INIT", default_value_t = true, action = clap::ArgAction::Set)]
    init: bool,

    /// Jobs queued in the service for the memory figure; 0 skips the memory rows.
    #[arg(long, env = "AGENTRUN_BENCH_QUEUED", default_value_t = 10_000)]
    queued: usize,

    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    // `RUST_LOG=agentrun_docker=debug` (or `agentrun_podman`) prints each job step's time.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("starting the async runtime failed: {error}"))?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<(), String> {
    let mut report = Report::new(machine::describe(), args.concurrency);
    println!("{}", report.machine);
    println!(
        "command: cargo bench --bench engine -- {}\n",
        describe_args(&args)
    );

    if args.queued > 0 {
        println!("measuring the service's memory");
        match memory::measure(args.queued).await {
            Ok(rows) => report.memory = rows,
            Err(error) => {
                report.skipped.push(format!("memory: {error}"));
                eprintln!("skipping the memory rows: {error}");
            }
        }
    }

    let dir =
        tempfile::tempdir().map_err(|error| format!("creating a temp dir failed: {error}"))?;
    let agents = load_agents(&args.agents, dir.path()).await?;

    for executor in &args.executors {
        let result = match executor.as_str() {
            "subprocess" => bench_subprocess(&args, &agents, &mut report).await,
            "docker" => bench_docker(&args, &agents, &mut report).await,
            "podman" => bench_podman(&args, &agents, &mut report).await,
            other => Err(format!(
                "unknown executor {other:?}; expected subprocess, docker or podman"
            )),
        };
        if let Err(error) = result {
            report.skipped.push(format!("{executor}: {error}"));
            eprintln!("skipping {executor}: {error}");
        }
    }

    report.load_after = machine::load_average();
    println!("{report}");
    Ok(())
}

fn describe_args(args: &Args) -> String {
    format!(
        "--samples {} --subprocess-samples {} --jobs {} --subprocess-jobs {} --concurrency {} --warmup {} --builds {} --executors {} --agents {} --network {} --init {} --queued {}",
        args.samples,
        args.subprocess_samples,
        args.jobs,
        args.subprocess_jobs,
        args.concurrency,
        args.warmup,
        args.builds,
        args.executors.join(","),
        args.agents.join(","),
        args.network,
        args.init,
        args.queued
    )
}

/// A benchmark agent: its package and the integration made from it.
struct Agent {
    name: &'static str,
    loaded: LoadedPackage,
}

/// Writes the agents' packages into `dir` and loads them.
async fn load_agents(names: &[String], dir: &Path) -> Result<Vec<Arc<Agent>>, String> {
    let mut agents = Vec::new();
    for name in names {
        let (name, root) = match name.as_str() {
            "testagent" => ("testagent", write_testagent(dir)?),
            "python" => ("python", copy_echo_example(dir)?),
            other => {
                return Err(format!(
                    "unknown agent {other:?}; expected testagent or python"
                ))
            }
        };
        let loaded = load_package(&root)
            .await
            .map_err(|error| format!("loading the {name} package failed: {error:#}"))?;
        agents.push(Arc::new(Agent { name, loaded }));
    }
    Ok(agents)
}

/// Writes the test agent's package with a manifest that has a `message` field.
fn write_testagent(dir: &Path) -> Result<PathBuf, String> {
    let root = dir.join("testagent");
    testagent::write_testagent_package(&root);
    let manifest = "name = \"Bench testagent\"\n\n[[fields]]\nname = \"message\"\nlabel = \"Message\"\nui_element = \"textarea\"\n";
    std::fs::write(root.join("integration.toml"), manifest)
        .map_err(|error| format!("writing the test agent's manifest failed: {error}"))?;
    Ok(root)
}

/// Copies `examples/echo` (a Python agent on `python:3.11-slim`).
fn copy_echo_example(dir: &Path) -> Result<PathBuf, String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/echo");
    let root = dir.join("echo");
    std::fs::create_dir_all(&root)
        .map_err(|error| format!("creating {} failed: {error}", root.display()))?;
    for file in ["Dockerfile", "agent.py", "integration.toml"] {
        std::fs::copy(source.join(file), root.join(file))
            .map_err(|error| format!("copying examples/echo/{file} failed: {error}"))?;
    }
    Ok(root)
}

fn dispatcher(executor: Arc<dyn Executor>, network: Option<&str>) -> Arc<Dispatcher> {
    let mut defaults = DispatchDefaults::default();
    defaults.limits.network = network.map(str::to_owned);
    Arc::new(Dispatcher::with_defaults(executor, defaults))
}

/// Runs one work job through the dispatcher and checks that the reply carries the text sent.
async fn work(dispatcher: &Dispatcher, agent: &Agent, prepared: &Prepared) -> Result<(), String> {
    let request = WorkRequest {
        values: vec![("message".to_owned(), MESSAGE_TEXT.to_owned())],
        ..WorkRequest::default()
    };
    let result = dispatcher
        .work(&agent.loaded.integration, prepared, request)
        .await
        .map_err(|error| format!("{} job failed: {error:#}", agent.name))?;
    if result.status != JobStatus::Succeeded || result.message.as_deref() != Some(MESSAGE_TEXT) {
        return Err(format!(
            "{} job ended {:?} with message {:?}: {}",
            agent.name,
            result.status,
            result.message,
            result.error.unwrap_or_default()
        ));
    }
    Ok(())
}

/// Measures `samples` sequential jobs after `warmup` unmeasured ones. `before_each` runs
/// before every job, outside the measured time.
async fn engine_latency<B, F>(
    dispatcher: &Dispatcher,
    agent: &Agent,
    prepared: &Prepared,
    warmup: usize,
    samples: usize,
    before_each: B,
) -> Result<Latency, String>
where
    B: Fn() -> F,
    F: Future<Output = ()>,
{
    for _ in 0..warmup {
        before_each().await;
        work(dispatcher, agent, prepared).await?;
    }
    let mut measured = Vec::with_capacity(samples);
    for _ in 0..samples {
        before_each().await;
        let began = Instant::now();
        work(dispatcher, agent, prepared).await?;
        measured.push(began.elapsed());
    }
    Ok(Latency::of(measured))
}

/// Runs `jobs` jobs with `concurrency` in flight and returns the rate.
async fn engine_throughput(
    dispatcher: &Arc<Dispatcher>,
    agent: &Arc<Agent>,
    prepared: &Prepared,
    jobs: usize,
    concurrency: usize,
) -> Result<Throughput, String> {
    let next = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let next = Arc::clone(&next);
            let dispatcher = Arc::clone(dispatcher);
            let agent = Arc::clone(agent);
            let prepared = prepared.clone();
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < jobs {
                    work(&dispatcher, &agent, &prepared).await?;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for worker in workers {
        worker
            .await
            .map_err(|error| format!("a benchmark task failed: {error}"))??;
    }
    Ok(Throughput::of(jobs, began.elapsed()))
}

/// Measures the cache-hit build: `count` prepares of a package whose result exists.
async fn cache_hit_build(
    dispatcher: &Dispatcher,
    agent: &Agent,
    count: usize,
) -> Result<Latency, String> {
    let mut measured = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let began = Instant::now();
        let prepared = dispatcher
            .prepare(&agent.loaded.integration)
            .await
            .map_err(|error| format!("preparing {} failed: {error:#}", agent.name))?;
        measured.push(began.elapsed());
        // The subprocess backend resolves the command each time and reports no cache.
        if !prepared.cache_hit && prepared.executor != "subprocess" {
            return Err(format!(
                "preparing {} again was not a cache hit",
                agent.name
            ));
        }
    }
    Ok(Latency::of(measured))
}

/// Returns the message the dispatcher sends, for the baselines.
fn baseline_message(agent: &Agent) -> Vec<u8> {
    let values = [("message".to_owned(), MESSAGE_TEXT.to_owned())];
    Request::work(
        agent.loaded.integration.agent_id,
        1_507_824_886_086,
        &values,
    )
    .to_bytes()
}

/// Checks that a baseline's stdout is a reply with the text sent.
fn check_reply(stdout: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(stdout);
    let reply: serde_json::Value = serde_json::from_str(text.trim()).map_err(|error| {
        format!("the baseline's output is not one JSON reply ({error}): {text}")
    })?;
    match reply["payload"]["message"].as_str() {
        Some(MESSAGE_TEXT) => Ok(()),
        _ => Err(format!("the baseline's reply lacks the sent text: {text}")),
    }
}

/// Runs a blocking baseline measurement on a thread of its own.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| format!("a baseline thread failed: {error}"))?
}

/// Measures latency and throughput of a baseline command.
async fn bench_baseline(
    command: BaselineCommand,
    message: Vec<u8>,
    warmup: usize,
    samples: usize,
    jobs: usize,
    concurrency: usize,
) -> Result<(Latency, Throughput), String> {
    blocking(move || {
        let latency = baseline::latency(&command, &message, warmup, samples, &check_reply)?;
        let throughput = baseline::throughput(&command, &message, jobs, concurrency, &check_reply)?;
        Ok((latency, throughput))
    })
    .await
}

async fn bench_subprocess(
    args: &Args,
    agents: &[Arc<Agent>],
    report: &mut Report,
) -> Result<(), String> {
    let executor: Arc<dyn Executor> = Arc::new(SubprocessExecutor::default());
    let dispatcher = dispatcher(executor, None);
    for agent in agents {
        println!("measuring subprocess / {}", agent.name);
        let prepared = dispatcher
            .prepare(&agent.loaded.integration)
            .await
            .map_err(|error| format!("preparing {} failed: {error:#}", agent.name))?;
        let build = cache_hit_build(&dispatcher, agent, args.builds).await?;
        report
            .builds
            .push(BuildRow::new("subprocess", agent.name, build, None));

        let latency = engine_latency(
            &dispatcher,
            agent,
            &prepared,
            args.warmup,
            args.subprocess_samples,
            || async {},
        )
        .await?;
        let throughput = engine_throughput(
            &dispatcher,
            agent,
            &prepared,
            args.subprocess_jobs,
            args.concurrency,
        )
        .await?;

        let Target::Command { argv, working_dir } = &prepared.target else {
            return Err("the subprocess executor prepared no command".to_owned());
        };
        let command = BaselineCommand {
            program: PathBuf::from(&argv[0]),
            args: argv[1..].to_vec(),
            working_dir: Some(working_dir.clone()),
            env: Vec::new(),
        };
        let baseline = bench_baseline(
            command,
            baseline_message(agent),
            args.warmup,
            args.subprocess_samples,
            args.subprocess_jobs,
            args.concurrency,
        )
        .await?;
        report.rows.push(Row::new(
            "subprocess",
            agent.name,
            "engine",
            latency,
            throughput,
            "fork/exec",
            Some(baseline),
            None,
        ));
    }
    Ok(())
}

/// A container executor with and without a warm pool, and how to read the pool's counts.
struct ContainerBackends {
    name: &'static str,
    cold: Arc<dyn Executor>,
    warm: Arc<dyn Executor>,
    warm_stats: Box<dyn Fn() -> (usize, usize, u64, u64) + Send + Sync>,
    cli: &'static str,
    cli_env: Vec<(String, String)>,
}

async fn bench_docker(
    args: &Args,
    agents: &[Arc<Agent>],
    report: &mut Report,
) -> Result<(), String> {
    let config = DockerConfig {
        instance: "agentrun-bench".to_owned(),
        init: args.init,
        ..DockerConfig::default()
    };
    let cold = DockerExecutor::connect(config.clone())
        .await
        .map_err(|error| error.to_string())?;
    let warm = Arc::new(
        DockerExecutor::connect(DockerConfig {
            warm_pool_size: args.concurrency,
            ..config.clone()
        })
        .await
        .map_err(|error| error.to_string())?,
    );
    let stats_source = Arc::clone(&warm);
    let backends = ContainerBackends {
        name: "docker",
        cli_env: vec![
            ("DOCKER_HOST".to_owned(), cold.host().to_owned()),
            ("DOCKER_BUILDKIT".to_owned(), "0".to_owned()),
        ],
        cold: Arc::new(cold),
        warm,
        warm_stats: Box::new(move || {
            let stats = stats_source.warm_pool_stats();
            (stats.ready, stats.starting, stats.hits, stats.misses)
        }),
        cli: "docker",
    };
    bench_containers(args, agents, report, backends).await
}

async fn bench_podman(
    args: &Args,
    agents: &[Arc<Agent>],
    report: &mut Report,
) -> Result<(), String> {
    let config = PodmanConfig {
        instance: "agentrun-bench".to_owned(),
        init: args.init,
        ..PodmanConfig::default()
    };
    let cold = PodmanExecutor::connect(config.clone())
        .await
        .map_err(|error| error.to_string())?;
    let warm = Arc::new(
        PodmanExecutor::connect(PodmanConfig {
            warm_pool_size: args.concurrency,
            ..config
        })
        .await
        .map_err(|error| error.to_string())?,
    );
    let stats_source = Arc::clone(&warm);
    let backends = ContainerBackends {
        name: "podman",
        cold: Arc::new(cold),
        warm,
        warm_stats: Box::new(move || {
            let stats = stats_source.warm_pool_stats();
            (stats.ready, stats.starting, stats.hits, stats.misses)
        }),
        cli: "podman",
        cli_env: Vec::new(),
    };
    bench_containers(args, agents, report, backends).await
}

async fn bench_containers(
    args: &Args,
    agents: &[Arc<Agent>],
    report: &mut Report,
    backends: ContainerBackends,
) -> Result<(), String> {
    let name = backends.name;
    let cold = dispatcher(Arc::clone(&backends.cold), Some(&args.network));
    let warm = dispatcher(Arc::clone(&backends.warm), Some(&args.network));
    for agent in agents {
        println!("measuring {name} / {}", agent.name);
        let prepared = cold
            .prepare(&agent.loaded.integration)
            .await
            .map_err(|error| format!("preparing {} failed: {error:#}", agent.name))?;
        let Target::Image { reference } = &prepared.target else {
            return Err(format!("the {name} executor prepared no image"));
        };

        // Cache-hit build: the engine's prepare, and the CLI's build of the same context.
        let build = cache_hit_build(&cold, agent, args.builds).await?;
        let cli_build = cli_build(&backends, agent, args.builds).await?;
        report
            .builds
            .push(BuildRow::new(name, agent.name, build, Some(cli_build)));

        // Cold: a fresh container per job.
        let latency = engine_latency(
            &cold,
            agent,
            &prepared,
            args.warmup,
            args.samples,
            || async {},
        )
        .await?;
        let throughput =
            engine_throughput(&cold, agent, &prepared, args.jobs, args.concurrency).await?;

        // The CLI on the same image, network and hardening.
        let command = BaselineCommand {
            program: PathBuf::from(backends.cli),
            args: [
                "run",
                "-i",
                "--rm",
                "--network",
                &args.network,
                "--cap-drop",
                "ALL",
                "--security-opt",
                "no-new-privileges",
                reference,
            ]
            .map(str::to_owned)
            .to_vec(),
            working_dir: None,
            env: backends.cli_env.clone(),
        };
        let baseline = bench_baseline(
            command,
            baseline_message(agent),
            args.warmup,
            args.samples,
            args.jobs,
            args.concurrency,
        )
        .await?;
        let cli_label = format!("{} run -i --rm", backends.cli);
        report.rows.push(Row::new(
            name,
            agent.name,
            "engine cold",
            latency,
            throughput,
            &cli_label,
            Some(baseline),
            None,
        ));

        // Warm: each measured job finds a ready container and nothing starting beside it.
        let stats = &backends.warm_stats;
        work(&warm, agent, &prepared).await?;
        let settled = || async {
            wait_until(|| {
                let (ready, starting, _, _) = stats();
                ready >= 1 && starting == 0
            })
            .await
        };
        let (_, _, hits_before, _) = stats();
        let warm_latency =
            engine_latency(&warm, agent, &prepared, args.warmup, args.samples, settled).await?;
        let (_, _, hits_after, _) = stats();
        let latency_hits = hits_after - hits_before;

        wait_until(|| stats().0 >= args.concurrency).await;
        let (_, _, hits_before, misses_before) = stats();
        let warm_throughput =
            engine_throughput(&warm, agent, &prepared, args.jobs, args.concurrency).await?;
        let (_, _, hits_after, misses_after) = stats();
        let note = format!(
            "pool of {}: {} of {} latency jobs warm; throughput {} warm, {} cold",
            args.concurrency,
            latency_hits,
            args.samples + args.warmup,
            hits_after - hits_before,
            misses_after - misses_before
        );
        report.rows.push(Row::new(
            name,
            agent.name,
            "engine warm",
            warm_latency,
            warm_throughput,
            &cli_label,
            Some(baseline),
            Some(note),
        ));
        wait_until(|| stats().1 == 0).await;
    }

    // Remove the warm containers now: a pool's removal on drop runs in background tasks,
    // which the runtime's shutdown at exit would cut short.
    backends
        .cold
        .sweep(&[])
        .await
        .map_err(|error| format!("removing the benchmark's containers failed: {error}"))?;
    Ok(())
}

/// Measures the CLI's cache-hit build of the agent's package, tagged apart from the engine's
/// images and removed afterwards.
async fn cli_build(
    backends: &ContainerBackends,
    agent: &Agent,
    count: usize,
) -> Result<Latency, String> {
    let tag = format!("agentrun-bench/{}:cli", agent.name);
    let command = BaselineCommand {
        program: PathBuf::from(backends.cli),
        args: vec![
            "build".to_owned(),
            "-q".to_owned(),
            "-t".to_owned(),
            tag.clone(),
            agent.loaded.integration.root.display().to_string(),
        ],
        working_dir: None,
        env: backends.cli_env.clone(),
    };
    let remove = BaselineCommand {
        program: PathBuf::from(backends.cli),
        args: vec!["rmi".to_owned(), tag],
        working_dir: None,
        env: backends.cli_env.clone(),
    };
    blocking(move || {
        // The first build fills the CLI's cache; the measured ones hit it.
        command.run(b"")?;
        let mut measured = Vec::with_capacity(count);
        for _ in 0..count.max(1) {
            let began = Instant::now();
            command.run(b"")?;
            measured.push(began.elapsed());
        }
        remove.run(b"")?;
        Ok(Latency::of(measured))
    })
    .await
}

/// Waits until `done` returns true, polling every millisecond.
async fn wait_until(done: impl Fn() -> bool) {
    while !done() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
