//! One pass from model input to answers: embed a batch with the engine, then the
//! conformal predictor. Shared by the CLI, the HTTP service and the benchmark.

use crate::model::loader::LoadedModel;
use crate::model::predictor::Answer;

/// Why a batch could not be answered (the model's side: a 5xx over HTTP).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Runtime(#[from] crate::model::runtime::RuntimeError),
    #[error("conformal predictor: {0}")]
    Icp(#[from] shared::icp::IcpError),
}

/// Answers and embeddings (`n x E`) of `input` (`n` NHWC images of raw pixel values).
pub fn answer(
    model: &LoadedModel,
    input: &[f32],
    epsilon: f64,
) -> Result<(Vec<Answer>, Vec<f32>), PipelineError> {
    let emb = model.engine.embed(input)?;
    let answers = model.predictor.answer(&emb, epsilon)?;
    Ok((answers, emb))
}
