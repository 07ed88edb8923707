//! `tierwatch-agent`: run, check a config, or run one probe for debugging.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tierwatch_agent::config::Config;
use tierwatch_agent::probe::{self, Icmp, Prober};
use tierwatch_agent::run;
use tierwatch_runtime::logging::{self, RunArgs};

#[derive(Parser)]
#[command(
    name = "tierwatch-agent",
    version,
    about = "tierwatch node agent: probes WAN links and services, pushes to the collector"
)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file, print every problem.
    CheckConfig {
        /// The agent configuration file.
        file: PathBuf,
    },
    /// Run one probe of one target and print the result.
    Probe {
        /// The agent configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Name of the target (as in `targets[].name`).
        target: String,
    },
}

/// One thread: the agent's work is a few percent of a core, and every extra
/// worker costs a stack and a malloc arena on a small commune node. Blocking
/// work (file reads, name resolution) runs on tokio's blocking pool.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")
}

fn main() -> std::process::ExitCode {
    tierwatch_runtime::exit::report(real_main())
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => {
            let c = Config::load(&file)?;
            println!(
                "{}: OK (node {}, {} targets, {} collector endpoints)",
                file.display(),
                c.node,
                c.targets.len(),
                c.endpoints.len()
            );
            Ok(())
        }
        Some(Command::Probe { config, target }) => {
            let c = Config::load_without_tls(&config)?;
            let _ = logging::init(cli.run.log_format, "warn");
            let Some(t) = c.target(&target).cloned() else {
                let names: Vec<&str> = c.targets.iter().map(|t| t.name.as_str()).collect();
                anyhow::bail!("no target {target:?} in {}; targets: {}", config.display(), names.join(", "));
            };
            // One run: its stray replies are counted nowhere.
            let stray = prometheus::IntCounter::new("stray", "unused")?;
            let outcome = runtime()?.block_on(async move {
                let icmp = if matches!(t.spec, tierwatch_agent::probe::ProbeSpec::Icmp { .. }) {
                    Icmp::open(stray)
                } else {
                    Icmp::Unavailable("not needed".into())
                };
                Prober::new(t).verbose().run(&icmp).await
            });
            print_outcome(&outcome);
            if !outcome.success {
                std::process::exit(1);
            }
            Ok(())
        }
        None => {
            let Some(file) = cli.run.config else {
                anyhow::bail!("--config FILE is required to run the agent (see --help)");
            };
            let config = Config::load(&file)?;
            let level = logging::init(cli.run.log_format, &config.log_level);
            let reload = || Config::load(&file).map_err(|e| e.to_string());
            // Each start (a reload, or the fallback to the previous config) brings its log level.
            let start = |c: Config, token| {
                level.set(&c.log_level);
                run::start(c, token)
            };
            runtime()?
                .block_on(tierwatch_runtime::service::supervise(config, reload, start))
                .with_context(|| format!("running the agent from {}", file.display()))
        }
    }
}

fn print_outcome(o: &probe::Outcome) {
    println!("probe {} of target {}: {}", o.kind.as_str(), o.target, if o.success { "SUCCESS" } else { "FAILURE" });
    for line in &o.detail {
        println!("  {line}");
    }
    if let Some(e) = &o.error {
        println!("  error: {e}");
    }
    println!("  took {:.3} ms", o.duration.as_secs_f64() * 1000.0);
    println!("metrics:");
    for s in &o.series {
        let value = s.points.first().map(|p| p.value).unwrap_or(f64::NAN);
        println!("  {} {}", s.display_name(), value);
    }
}
