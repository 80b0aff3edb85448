//! One run -> model files, each checked against the trained network through tract.

use anyhow::{bail, Context, Result};

use crate::golden::{Golden, TOLERANCE};
use crate::net::FoldedNet;
use crate::runtime::{max_abs_diff, Format, TractModel};
use crate::source::RunSource;

/// The exported files of one run and their measured parity.
pub struct Exported {
    pub net: FoldedNet,
    pub onnx: Vec<u8>,
    pub tflite: Vec<u8>,
    pub onnx_max_abs: f32,
    pub tflite_max_abs: f32,
}

/// Metadata written into the ONNX file (and the TFLite description).
pub fn model_metadata(src: &RunSource) -> Vec<(String, String)> {
    vec![
        ("edgecp.run_id".into(), src.run_id.clone()),
        (
            "edgecp.arch".into(),
            serde_json::to_string(src.net.arch()).unwrap_or_default(),
        ),
        (
            "edgecp.input".into(),
            "float32 NHWC [N,S,S,3] raw RGB pixels 0..255; the graph normalises x/255-0.5".into(),
        ),
    ]
}

/// Largest |difference| of `format` file `bytes` to `golden`'s expected outputs, through tract.
pub fn parity(format: Format, bytes: &[u8], golden: &Golden) -> Result<f32> {
    let model = TractModel::load(format, bytes, golden.count(), golden.side)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| format!("loading the {} model in tract", format.name()))?;
    let out = model
        .run(&golden.raw_f32())
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| format!("running the {} model in tract", format.name()))?;
    Ok(max_abs_diff(&out, &golden.expected))
}

/// Writes ONNX and TFLite bytes for `src` and checks both on `golden` (fails above
/// [`TOLERANCE`]).
pub fn export(src: &RunSource, golden: &Golden) -> Result<Exported> {
    let net = FoldedNet::from_backbone(&src.net).context("folding batch norm")?;
    let meta = model_metadata(src);
    let onnx = crate::onnx::to_onnx_bytes(&net, &meta);
    let description = format!("edgecp embedding network, run {}", src.run_id);
    let tflite = crate::tflite::to_tflite_bytes(&net, &description);
    let onnx_max_abs = parity(Format::Onnx, &onnx, golden)?;
    let tflite_max_abs = parity(Format::Tflite, &tflite, golden)?;
    for (name, d) in [("ONNX", onnx_max_abs), ("TFLite", tflite_max_abs)] {
        if d.is_nan() || d > TOLERANCE {
            bail!("the {name} model differs from the trained network by {d:e} on the golden inputs (tolerance {TOLERANCE:e})");
        }
    }
    tracing::info!(
        onnx_max_abs,
        tflite_max_abs,
        "exported models match the trained network"
    );
    Ok(Exported {
        net,
        onnx,
        tflite,
        onnx_max_abs,
        tflite_max_abs,
    })
}
