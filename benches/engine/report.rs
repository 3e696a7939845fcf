//! The benchmark's printed report: one table of per-job figures with their baselines and
//! ratios, the targets, the cache-hit builds and the memory figures.

use std::fmt;

use crate::memory::MemoryRow;
use crate::stats::{ms, ratio, Latency, Throughput};

/// Everything one run measured.
pub struct Report {
    pub machine: String,
    pub concurrency: usize,
    pub rows: Vec<Row>,
    pub builds: Vec<BuildRow>,
    pub memory: Vec<MemoryRow>,
    pub skipped: Vec<String>,
    pub load_after: String,
}

/// The figures of one executor, agent and engine path, with the baseline's.
pub struct Row {
    executor: &'static str,
    agent: &'static str,
    path: &'static str,
    latency: Latency,
    throughput: Throughput,
    baseline_label: String,
    baseline: Option<(Latency, Throughput)>,
    note: Option<String>,
}

/// A cache-hit build: the engine's prepare and, for containers, the CLI's build.
pub struct BuildRow {
    executor: &'static str,
    agent: &'static str,
    engine: Latency,
    cli: Option<Latency>,
}

impl Row {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        executor: &'static str,
        agent: &'static str,
        path: &'static str,
        latency: Latency,
        throughput: Throughput,
        baseline_label: &str,
        baseline: Option<(Latency, Throughput)>,
        note: Option<String>,
    ) -> Self {
        Self {
            executor,
            agent,
            path,
            latency,
            throughput,
            baseline_label: baseline_label.to_owned(),
            baseline,
            note,
        }
    }

    /// Returns the target this row is held to, and whether it is met.
    fn targets(&self) -> Vec<(String, bool)> {
        let Some((base_latency, base_throughput)) = self.baseline else {
            return Vec::new();
        };
        let median_ratio = self.latency.median.as_secs_f64() / base_latency.median.as_secs_f64();
        let throughput_ratio = self.throughput.jobs_per_sec / base_throughput.jobs_per_sec;
        match (self.executor, self.path) {
            ("subprocess", _) => {
                let overhead = self.latency.median.as_secs_f64() * 1000.0
                    - base_latency.median.as_secs_f64() * 1000.0;
                let mut targets = vec![(
                    format!("median overhead {overhead:.2} ms < 1 ms"),
                    overhead < 1.0,
                )];
                // The jobs/s target is for a trivial agent; a Python agent's own start-up
                // bounds its rate far below it.
                if self.agent == "testagent" {
                    targets.push((
                        format!("{:.0} jobs/s >= 1000", self.throughput.jobs_per_sec),
                        self.throughput.jobs_per_sec >= 1000.0,
                    ));
                }
                targets
            }
            (_, "engine warm") => vec![(
                format!("median {median_ratio:.2}× CLI <= 0.25×"),
                median_ratio <= 0.25,
            )],
            _ => vec![
                (
                    format!("median {median_ratio:.2}× CLI <= 0.95×"),
                    median_ratio <= 0.95,
                ),
                (
                    format!("throughput {throughput_ratio:.2}× CLI >= 1.5×"),
                    throughput_ratio >= 1.5,
                ),
            ],
        }
    }
}

impl BuildRow {
    pub fn new(
        executor: &'static str,
        agent: &'static str,
        engine: Latency,
        cli: Option<Latency>,
    ) -> Self {
        Self {
            executor,
            agent,
            engine,
            cli,
        }
    }
}

impl Report {
    pub fn new(machine: String, concurrency: usize) -> Self {
        Self {
            machine,
            concurrency,
            rows: Vec::new(),
            builds: Vec::new(),
            memory: Vec::new(),
            skipped: Vec::new(),
            load_after: String::new(),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let conc = self.concurrency;
        writeln!(
            f,
            "\n## Per-job latency (concurrency 1) and throughput (concurrency {conc})\n"
        )?;
        writeln!(
            f,
            "| executor | agent | path | p50 ms | p99 ms | jobs/s | baseline | p50 ms | p99 ms | jobs/s | p50 ratio | p99 ratio | jobs/s ratio | p50 Δ ms |"
        )?;
        writeln!(f, "|{}", " --- |".repeat(14))?;
        for row in &self.rows {
            let (base_p50, base_p99, base_rate, r50, r99, rrate, delta) = match row.baseline {
                Some((latency, throughput)) => (
                    ms(latency.median),
                    ms(latency.p99),
                    format!("{:.1}", throughput.jobs_per_sec),
                    ratio(
                        row.latency.median.as_secs_f64(),
                        latency.median.as_secs_f64(),
                    ),
                    ratio(row.latency.p99.as_secs_f64(), latency.p99.as_secs_f64()),
                    ratio(row.throughput.jobs_per_sec, throughput.jobs_per_sec),
                    format!(
                        "{:+.2}",
                        (row.latency.median.as_secs_f64() - latency.median.as_secs_f64()) * 1000.0
                    ),
                ),
                None => Default::default(),
            };
            writeln!(
                f,
                "| {} | {} | {} | {} | {} | {:.1} | {} | {base_p50} | {base_p99} | {base_rate} | {r50} | {r99} | {rrate} | {delta} |",
                row.executor,
                row.agent,
                row.path,
                ms(row.latency.median),
                ms(row.latency.p99),
                row.throughput.jobs_per_sec,
                row.baseline_label,
            )?;
        }
        let notes: Vec<_> = self
            .rows
            .iter()
            .filter_map(|row| row.note.as_ref().map(|note| (row, note)))
            .collect();
        if !notes.is_empty() {
            writeln!(f)?;
            for (row, note) in notes {
                writeln!(
                    f,
                    "- {} / {} / {}: {note}",
                    row.executor, row.agent, row.path
                )?;
            }
        }
        if let Some(row) = self.rows.first() {
            writeln!(
                f,
                "\nSamples: {} latency jobs and {} throughput jobs for the first row; ratios are engine / baseline.",
                row.latency.samples, row.throughput.jobs
            )?;
        }

        writeln!(f, "\n## Targets\n")?;
        writeln!(f, "| executor | agent | path | target | met |")?;
        writeln!(f, "| --- | --- | --- | --- | --- |")?;
        for row in &self.rows {
            for (target, met) in row.targets() {
                let met = if met { "yes" } else { "NO" };
                writeln!(
                    f,
                    "| {} | {} | {} | {target} | {met} |",
                    row.executor, row.agent, row.path
                )?;
            }
        }

        writeln!(f, "\n## Cache-hit build\n")?;
        writeln!(
            f,
            "| executor | agent | engine p50 ms | engine p99 ms | CLI build p50 ms | ratio |"
        )?;
        writeln!(f, "| --- | --- | --- | --- | --- | --- |")?;
        for build in &self.builds {
            let (cli, cli_ratio) = match build.cli {
                Some(cli) => (
                    ms(cli.median),
                    ratio(build.engine.median.as_secs_f64(), cli.median.as_secs_f64()),
                ),
                None => ("-".to_owned(), "-".to_owned()),
            };
            writeln!(
                f,
                "| {} | {} | {} | {} | {cli} | {cli_ratio} |",
                build.executor,
                build.agent,
                ms(build.engine.median),
                ms(build.engine.p99)
            )?;
        }

        writeln!(f, "\n## Engine memory\n")?;
        if self.memory.is_empty() {
            writeln!(f, "Not measured.")?;
        } else {
            writeln!(
                f,
                "`agentrun serve` on the subprocess executor; MB are 10^6 bytes.\n"
            )?;
            writeln!(
                f,
                "| figure | VmRSS MB | VmHWM MB | RssAnon MB | threads | target | met |"
            )?;
            writeln!(f, "|{}", " --- |".repeat(7))?;
            for row in &self.memory {
                let (target, met) = match row.target_bytes {
                    Some(target) => (
                        format!("VmRSS < {}", mb(target)),
                        if row.rss_bytes < target { "yes" } else { "NO" },
                    ),
                    None => ("-".to_owned(), "-"),
                };
                writeln!(
                    f,
                    "| {} | {} | {} | {} | {} | {target} | {met} |",
                    row.figure,
                    mb(row.rss_bytes),
                    mb(row.hwm_bytes),
                    mb(row.anon_bytes),
                    row.threads
                )?;
            }
        }

        if !self.skipped.is_empty() {
            writeln!(f, "\n## Skipped\n")?;
            for skipped in &self.skipped {
                writeln!(f, "- {skipped}")?;
            }
        }
        writeln!(f, "\nload average after: {}", self.load_after)
    }
}

/// Formats bytes as MB (10^6 bytes) with one decimal.
fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}
