//! `tierwatch-collector`: run, check a config, or manage the PKI.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tierwatch_collector::config::Config;
use tierwatch_collector::{pki, server};
use tierwatch_protocol::NodeId;
use tierwatch_runtime::logging::{self, RunArgs};

/// 3,400 agents' pushes allocate and free a TLS record buffer, a batch's
/// strings and its series map each: glibc's allocator spent a third of the
/// collector's CPU on them (consolidating free lists); mimalloc's per-thread
/// pages do the same work for a fraction (BENCHMARKS.md, national scale).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tierwatch-collector",
    version,
    about = "tierwatch central collector: mTLS ingest, Prometheus exposition"
)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file (and the topology it names), print every problem.
    CheckConfig {
        /// The collector configuration file.
        file: PathBuf,
    },
    /// Print the node table of a running collector.
    Status {
        /// Base URL of the collector's HTTP listener.
        #[arg(long, default_value = "http://127.0.0.1:9400")]
        url: String,
    },
    /// Write a new random API token to FILE (mode 0640), for api.token_file.
    ApiToken {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Manage the certificate authority that signs agent and collector certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a CA (ca.crt, ca.key) in DIR.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Common name of the CA.
        #[arg(long, default_value = "tierwatch CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate and key for a node (ID.crt, ID.key), signed by the CA in DIR.
    Issue {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Node id (goes in CN and SAN DNS:ID).
        #[arg(long, value_name = "ID")]
        node: String,
        /// Issue a server certificate (for the collector's ingest port) instead of a client one.
        #[arg(long)]
        server: bool,
        /// Extra DNS names or IP addresses agents use to reach the collector (with --server).
        #[arg(long, value_name = "NAME_OR_IP", requires = "server")]
        san: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 397)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Add a certificate to the revocation list DIR/revoked.crl (name it in
    /// ingest.crl, then reload the collector).
    Revoke {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The node whose current certificate (DIR/ID.crt) is revoked.
        #[arg(long, value_name = "ID", required_unless_present = "serial", conflicts_with = "serial")]
        node: Option<String>,
        /// Or a certificate's serial number, hex.
        #[arg(long, value_name = "HEX")]
        serial: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    tierwatch_runtime::exit::report(real_main())
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => {
            let config = Config::load(&file)?;
            println!(
                "{}: OK ({} nodes in {}, ingest on {}, http on {})",
                file.display(),
                config.topology.nodes().len(),
                config.topology_file.display(),
                config.ingest.listen,
                config.http.listen
            );
            Ok(())
        }
        Some(Command::Status { url }) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let nodes = rt.block_on(tierwatch_collector::status::fetch(&url))?;
            print!("{}", tierwatch_collector::status::render(&nodes));
            Ok(())
        }
        Some(Command::ApiToken { out, force }) => {
            tierwatch_runtime::secret::generate(&out, force).with_context(|| "writing the API token".to_string())?;
            println!("API token written: {} (mode 0640); name it in api.token_file", out.display());
            Ok(())
        }
        Some(Command::Pki(PkiCommand::Init { dir, name, days, force })) => {
            let cert = pki::init(&dir, &name, days, force)?;
            println!("CA written: {} (key {}, mode 0600)", cert.display(), dir.join(pki::CA_KEY).display());
            Ok(())
        }
        Some(Command::Pki(PkiCommand::Issue { dir, node, server, san, days, force })) => {
            let id = NodeId::new(&node).with_context(|| format!("--node {node:?}"))?;
            let usage = if server { pki::Usage::Server { sans: san } } else { pki::Usage::Client };
            let issued = pki::issue(&dir, &id, &usage, days, force)?;
            println!("certificate: {}\nkey:         {} (mode 0600)", issued.cert.display(), issued.key.display());
            Ok(())
        }
        Some(Command::Pki(PkiCommand::Revoke { dir, node, serial })) => {
            let which = match (node, serial) {
                (Some(n), _) => pki::Revoke::Node(NodeId::new(&n).with_context(|| format!("--node {n:?}"))?),
                (None, Some(s)) => pki::Revoke::Serial(s),
                (None, None) => anyhow::bail!("give --node ID or --serial HEX"),
            };
            let r = pki::revoke(&dir, &which)?;
            let what = if r.added { "revoked" } else { "already revoked" };
            println!(
                "serial {} {what}; {} holds {} certificate(s).\nName it in ingest.crl and reload the collector (systemctl reload tierwatch-collector).",
                r.serial,
                r.crl.display(),
                r.entries
            );
            Ok(())
        }
        None => {
            let Some(file) = cli.run.config else {
                anyhow::bail!("--config FILE is required to run the collector (see --help)");
            };
            let config = Config::load(&file)?;
            let level = logging::init(cli.run.log_format, &config.log_level);
            run(config, &file, level)
        }
    }
}

fn run(config: Config, file: &std::path::Path, level: logging::LogLevel) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")?;
    let reload = || Config::load(file).map_err(|e| e.to_string());
    // Each start (a reload, or the fallback to the previous config) brings its log level.
    let start = |c: Config, token| {
        level.set(&c.log_level);
        server::start(c, token)
    };
    rt.block_on(tierwatch_runtime::service::supervise(config, reload, start))
        .with_context(|| format!("running the collector from {}", file.display()))
}
