//! `trainer`: turns traffic-sign images into calibrated embedding models.
//!
//! Subcommands: `ingest` (images -> versioned dataset shards), `train` (one trial), `sweep`
//! and `worker` (many trials on many machines), `runs` and `best` (the registry), `demo` (the
//! offline path end to end), `bench` (speed figures against the tools a user would
//! otherwise pick).

use trainer::{
    bench, best, demo, ingest, memory, registry, rollout, runs, sweep, train_cmd, worker,
};

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
    /// Run registry URL: `sqlite://FILE?mode=rwc` (embedded default) or
    /// `mysql://USER:PASSWORD@HOST:PORT/DB`.
    #[arg(long, global = true, env = registry::URL_ENV, default_value = registry::DEFAULT_URL)]
    registry: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read images (official GTSRB layout, compact u8 files, or synthetic signs), resize,
    /// split by track and write a versioned dataset to a directory or object-store URL.
    Ingest(ingest::IngestArgs),
    /// Train one trial (siamese embedding network), calibrate and evaluate its conformal
    /// predictor, and record everything in the run registry.
    Train(train_cmd::TrainArgs),
    /// Write a grid or random search (a TOML spec) to the registry as trials for workers;
    /// `--show NAME` lists a sweep's trials.
    Sweep(sweep::SweepArgs),
    /// Claim trials from the registry and run them (any number of workers, any machines):
    /// train, record, track in MLflow, export and bundle each.
    Worker(worker::WorkerArgs),
    /// List and inspect recorded runs.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// The best finished run by a validation metric (plain SQL over the registry) and its
    /// newest bundle.
    Best(best::BestArgs),
    /// Run the offline path end to end on synthetic signs (or --data): ingest, embed,
    /// calibrate, evaluate; prints the ICP table over epsilon.
    Demo(demo::DemoArgs),
    /// Speed benchmarks against the Python tools a user would otherwise pick.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Sign a rollout (or rollback) command with a command key, publish it to devices or
    /// a fleet over MQTT, follow their events and print each device's outcome.
    Rollout(rollout::RolloutArgs),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// ICP decisions/s (nearest centroid, k-NN) and silhouette against NumPy / scikit-learn.
    Icp(bench::IcpBenchArgs),
    /// Training and inference images/s of the reference network: our convolution vs
    /// candle's own conv2d.
    Train(bench::TrainBenchArgs),
}

fn main() -> std::process::ExitCode {
    memory::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // candle sizes its matrix products from RAYON_NUM_THREADS and rayon's default counts
    // physical cores only: use every logical CPU unless the user chose.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", shared::error_text::chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Ingest(args) => ingest::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Train(args) => train_cmd::run(&args, &cli.registry),
        Command::Sweep(args) => sweep::run(&args, &cli.registry),
        Command::Worker(args) => worker::run(&args, &cli.registry),
        Command::Runs(cmd) => runs::run(&cmd, &cli.registry),
        Command::Best(args) => best::run(&args, &cli.registry),
        Command::Bench(BenchCommand::Icp(args)) => bench::run_icp(&args),
        Command::Bench(BenchCommand::Train(args)) => bench::run_train(&args),
        Command::Rollout(args) => rollout::run(&args),
    }
}
