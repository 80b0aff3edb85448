//! `trainer`: turns traffic-sign images into calibrated embedding models.
//!
//! Subcommands: `ingest` (images -> versioned dataset shards), `demo` (the offline path
//! end to end), `bench` (speed figures against the tools a user would otherwise pick).

mod bench;
mod demo;
mod evaluate;
mod ingest;
mod plots;
mod progress;
mod registry;
mod runs;
mod training;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "trainer",
    version,
    about = "Train siamese embedding networks and calibrate conformal predictors for traffic signs",
    long_about = "Train siamese embedding networks and calibrate inductive conformal predictors \
                  (ICP) for traffic-sign recognition.\n\nStart with `trainer demo`: it needs no data \
                  and no services. Logs go to stderr (RUST_LOG=debug for more); results and --json \
                  output go to stdout."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read images (official GTSRB layout, compact u8 files, or synthetic signs), resize,
    /// split by track and write a versioned dataset to a directory or object-store URL.
    Ingest(ingest::IngestArgs),
    /// Run the offline path end to end on synthetic signs (or --data): ingest, embed,
    /// calibrate, evaluate; prints the ICP table over epsilon.
    Demo(demo::DemoArgs),
    /// Speed benchmarks against the Python tools a user would otherwise pick.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// ICP decisions/s (nearest centroid, k-NN) and silhouette against NumPy / scikit-learn.
    Icp(bench::IcpBenchArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Ingest(args) => ingest::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(BenchCommand::Icp(args)) => bench::run_icp(&args),
    }
}
