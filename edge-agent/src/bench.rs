//! `edge-agent bench` (filled in by the benchmark step).

use anyhow::{bail, Result};
use clap::Args;
use edge_agent::config::FileConfig;

use crate::{ModelArgs, Resolved};

/// Benchmark settings.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print the figures as one JSON object (last line).
    #[arg(long)]
    pub json: bool,
}

pub fn run(
    _a: &BenchArgs,
    _file: &FileConfig,
    _resolve: impl Fn(&ModelArgs) -> Result<Resolved>,
) -> Result<std::process::ExitCode> {
    bail!("bench: not implemented yet")
}
