//! `edge-agent`: the on-device runtime that verifies signed bundles and answers every input
//! with a conformal prediction set. The commands arrive with the edge-agent issue; until
//! then this binary only explains itself.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "edge-agent",
    version,
    about = "Serve verified models on edge devices with conformal prediction sets",
    long_about = "Serve verified models on edge devices: pull and verify signed bundles, swap \
                  them in atomically, and answer every input with an inductive conformal \
                  prediction set whose error rate stays below a chosen epsilon.\n\nNot \
                  implemented yet in this version: it accepts only --help and --version."
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    anyhow::bail!("no agent commands in this version yet; see `edge-agent --help`")
}
