//! `exporter`: trained weights -> ONNX, TFLite and TensorRT, checked against the trained
//! network, packed into signed bundles. The commands arrive with the exporter issue; until
//! then this binary only explains itself.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "exporter",
    version,
    about = "Export trained embedding networks to ONNX / TFLite / TensorRT and sign model bundles",
    long_about = "Export trained embedding networks to ONNX, TFLite and (where NVIDIA TensorRT \
                  exists) TensorRT engines, check each against the trained network, and pack \
                  signed bundles for edge devices.\n\nNot implemented yet in this version: it \
                  accepts only --help and --version."
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    anyhow::bail!("no export commands in this version yet; see `exporter --help`")
}
