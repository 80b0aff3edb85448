//! Golden inputs: a few images with the trained network's own outputs, stored in a bundle
//! so that a device (or `exporter verify`) can prove its runtime computes the same
//! embeddings. Format (docs/BUNDLE.md): safetensors with `inputs` u8 `[G, S, S, 3]` (NHWC
//! RGB, raw pixels), `expected` f32 `[G, E]`, `labels` u16 `[G]`.

use std::collections::HashMap;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// Golden images per bundle.
pub const GOLDEN_COUNT: usize = 16;
/// Largest |difference| a float32 model may show against the trained network.
pub const TOLERANCE: f32 = 1e-4;

/// Why golden data could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{file}: golden data: {what}")]
pub struct GoldenError {
    pub file: String,
    pub what: String,
}

/// Golden inputs and expected outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Golden {
    pub side: usize,
    pub dim: usize,
    /// `G x S x S x 3` raw pixels.
    pub inputs: Vec<u8>,
    pub labels: Vec<u16>,
    pub expected: Vec<f32>,
}

impl Golden {
    pub fn count(&self) -> usize {
        self.labels.len()
    }

    /// The inputs as the exported graphs take them (f32 raw pixel values).
    pub fn raw_f32(&self) -> Vec<f32> {
        self.inputs.iter().map(|&v| f32::from(v)).collect()
    }

    /// The safetensors file.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, GoldenError> {
        let bad = |e: safetensors::SafeTensorError| GoldenError {
            file: "golden.safetensors".into(),
            what: e.to_string(),
        };
        let g = self.count();
        let expected: Vec<u8> = self.expected.iter().flat_map(|x| x.to_le_bytes()).collect();
        let labels: Vec<u8> = self.labels.iter().flat_map(|x| x.to_le_bytes()).collect();
        let views = vec![
            (
                "inputs",
                TensorView::new(Dtype::U8, vec![g, self.side, self.side, 3], &self.inputs)
                    .map_err(bad)?,
            ),
            (
                "expected",
                TensorView::new(Dtype::F32, vec![g, self.dim], &expected).map_err(bad)?,
            ),
            (
                "labels",
                TensorView::new(Dtype::U16, vec![g], &labels).map_err(bad)?,
            ),
        ];
        let meta = HashMap::from([(
            "edgecp.golden".to_string(),
            format!("inputs: raw RGB pixels NHWC; expected: embeddings; tolerance {TOLERANCE}"),
        )]);
        safetensors::serialize(views, Some(meta)).map_err(bad)
    }

    /// Reads a golden file; `file` names it in errors.
    pub fn parse(bytes: &[u8], file: &str) -> Result<Golden, GoldenError> {
        let bad = |what: String| GoldenError {
            file: file.to_string(),
            what,
        };
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let get = |name: &str, dtype: Dtype| {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("no tensor {name:?}")))?;
            if t.dtype() != dtype {
                return Err(bad(format!(
                    "tensor {name:?} is {:?}, expected {dtype:?}",
                    t.dtype()
                )));
            }
            Ok((t.shape().to_vec(), t.data()))
        };
        let (ishape, inputs) = get("inputs", Dtype::U8)?;
        let (eshape, expected) = get("expected", Dtype::F32)?;
        let (lshape, labels) = get("labels", Dtype::U16)?;
        let (g, side, dim) = match (&ishape[..], &eshape[..]) {
            ([g, s, s2, 3], [g2, e]) if s == s2 && g == g2 && lshape == [*g] => (*g, *s, *e),
            _ => {
                return Err(bad(format!(
                    "inconsistent shapes {ishape:?} / {eshape:?} / {lshape:?} (expected [G, S, S, 3] / [G, E] / [G])"
                )))
            }
        };
        if g == 0 {
            return Err(bad("no golden inputs".into()));
        }
        Ok(Golden {
            side,
            dim,
            inputs: inputs.to_vec(),
            expected: expected
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            labels: labels
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_inconsistent_files() {
        let g = Golden {
            side: 2,
            dim: 3,
            inputs: (0..2 * 2 * 2 * 3).map(|v| v as u8).collect(),
            labels: vec![4, 7],
            expected: vec![0.5, -1.0, 2.0, 3.0, 0.25, -0.125],
        };
        let bytes = g.to_safetensors().unwrap();
        assert_eq!(Golden::parse(&bytes, "g").unwrap(), g);
        let e = Golden::parse(&bytes[..bytes.len() - 3], "golden.safetensors").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("golden.safetensors: golden data:"),
            "{e}"
        );
        // one label too many: the writer refuses it, and so does the reader
        let mut bad = g.clone();
        bad.labels.push(1);
        assert!(bad.to_safetensors().is_err());
        let labels: Vec<u8> = bad.labels.iter().flat_map(|x| x.to_le_bytes()).collect();
        let expected: Vec<u8> = g.expected.iter().flat_map(|x| x.to_le_bytes()).collect();
        let views = vec![
            (
                "inputs",
                TensorView::new(Dtype::U8, vec![2, 2, 2, 3], &g.inputs).unwrap(),
            ),
            (
                "expected",
                TensorView::new(Dtype::F32, vec![2, 3], &expected).unwrap(),
            ),
            (
                "labels",
                TensorView::new(Dtype::U16, vec![3], &labels).unwrap(),
            ),
        ];
        let file = safetensors::serialize(views, None).unwrap();
        let e = Golden::parse(&file, "g").unwrap_err();
        assert!(e.to_string().contains("inconsistent shapes"), "{e}");
    }
}
