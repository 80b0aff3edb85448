//! The trained network as plain arrays, ready for any file format: batch norm folded into
//! the convolutions (inference mode: running statistics), dropout gone.
//!
//! The input normalisation `x / 255 - 0.5` is NOT folded into the first convolution: its
//! 'same' zero padding pads normalised values with 0, which is raw 127.5, so a folded
//! first layer would differ at the borders. The exported graphs start with a multiply and
//! an add instead (two cheap element-wise ops on 3 * S * S values).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use trainer::training::model::{
    decode_safetensors, Arch, Backbone, ARCH_METADATA_KEY, BN_EPS, INPUT_OFFSET, INPUT_SCALE,
    L2_EPS,
};

/// Why a weights file could not become a network.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("weights file {}: cannot read it: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("weights file {}: not a valid safetensors file (truncated or corrupt?): {detail}", path.display())]
    Decode { path: PathBuf, detail: String },
    #[error("weights file {}: metadata key {ARCH_METADATA_KEY} does not describe an architecture: {detail}", path.display())]
    Arch { path: PathBuf, detail: String },
    #[error("weights file {}: tensors do not fit the architecture it names: {detail}", path.display())]
    Shape { path: PathBuf, detail: String },
}

/// One convolution block: KxK 'same' convolution (stride 1) + bias, ReLU, optional max-pool.
#[derive(Clone, Debug)]
pub struct ConvLayer {
    pub out_channels: usize,
    pub in_channels: usize,
    pub kernel: usize,
    /// PyTorch/ONNX layout `[O, I, K, K]`, batch norm folded in.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    /// Max-pool side and stride (1: none).
    pub pool: usize,
}

impl ConvLayer {
    /// The weights in TFLite's `[O, K, K, I]` layout.
    pub fn weight_ohwi(&self) -> Vec<f32> {
        let (o, i, k) = (self.out_channels, self.in_channels, self.kernel);
        let mut w = vec![0f32; self.weight.len()];
        for oc in 0..o {
            for ic in 0..i {
                for y in 0..k {
                    for x in 0..k {
                        w[((oc * k + y) * k + x) * i + ic] =
                            self.weight[((oc * i + ic) * k + y) * k + x];
                    }
                }
            }
        }
        w
    }
}

/// The network in inference form.
#[derive(Clone, Debug)]
pub struct FoldedNet {
    pub arch: Arch,
    pub convs: Vec<ConvLayer>,
    /// `[E, F]` with F in C, H, W order (the candle / ONNX flatten order).
    pub dense_weight: Vec<f32>,
    pub dense_bias: Vec<f32>,
    pub input_scale: f32,
    pub input_offset: f32,
    pub l2_eps: f32,
}

fn vec1(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// The layer plan of [`trainer::training::model`]: (index, kernel, pool).
pub const BLOCKS: [(usize, usize, usize); 3] = [(1, 5, 1), (2, 3, 2), (3, 3, 2)];

impl FoldedNet {
    /// Folds a loaded network. Batch norm is folded with the same f32 tensor arithmetic as
    /// the trainer's own inference path, so the numbers match it to rounding.
    pub fn from_backbone(net: &Backbone) -> candle_core::Result<FoldedNet> {
        let arch = net.arch().clone();
        let t: HashMap<String, Tensor> = net.named_tensors().into_iter().collect();
        let get = |n: &str| {
            t.get(n)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {n}")))
        };
        let mut convs = Vec::new();
        for (i, k, pool) in BLOCKS {
            let mut w = get(&format!("conv{i}.weight"))?;
            let mut b = get(&format!("conv{i}.bias"))?;
            let (o, c) = (w.dim(0)?, w.dim(1)?);
            if arch.batch_norm {
                let gamma = get(&format!("bn{i}.weight"))?;
                let beta = get(&format!("bn{i}.bias"))?;
                let rm = get(&format!("bn{i}.running_mean"))?;
                let rv = get(&format!("bn{i}.running_var"))?;
                let scale = (gamma / (rv + BN_EPS)?.sqrt()?)?;
                let shift = (beta - (rm * &scale)?)?;
                w = w.broadcast_mul(&scale.reshape((o, 1, 1, 1))?)?;
                b = ((b * &scale)? + shift)?;
            }
            convs.push(ConvLayer {
                out_channels: o,
                in_channels: c,
                kernel: k,
                weight: vec1(&w)?,
                bias: vec1(&b)?,
                pool,
            });
        }
        Ok(FoldedNet {
            convs,
            dense_weight: vec1(&get("dense.weight")?)?,
            dense_bias: vec1(&get("dense.bias")?)?,
            input_scale: INPUT_SCALE,
            input_offset: INPUT_OFFSET,
            l2_eps: L2_EPS as f32,
            arch,
        })
    }

    /// Side of the (square) feature map after the convolution blocks.
    pub fn final_side(&self) -> usize {
        self.convs.iter().fold(self.arch.side, |s, c| s / c.pool)
    }

    /// Channels of the last convolution.
    pub fn final_channels(&self) -> usize {
        self.convs.last().map_or(3, |c| c.out_channels)
    }

    /// The dense weights with columns in H, W, C order (TFLite flattens NHWC).
    pub fn dense_weight_hwc(&self) -> Vec<f32> {
        let (s, c) = (self.final_side(), self.final_channels());
        let f = s * s * c;
        let e = self.arch.embedding_dim;
        let mut w = vec![0f32; e * f];
        for row in 0..e {
            for ch in 0..c {
                for p in 0..s * s {
                    w[row * f + p * c + ch] = self.dense_weight[row * f + ch * s * s + p];
                }
            }
        }
        w
    }
}

/// Reads a weights file written by the trainer; every failure names the file.
pub fn load_backbone(path: &Path) -> Result<Backbone, WeightsError> {
    let bytes = std::fs::read(path).map_err(|source| WeightsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    backbone_from_bytes(&bytes, path)
}

/// As [`load_backbone`] over bytes already read; `path` names them in errors.
pub fn backbone_from_bytes(bytes: &[u8], path: &Path) -> Result<Backbone, WeightsError> {
    let dev = Device::Cpu;
    let (tensors, meta) =
        decode_safetensors(bytes, &dev, ARCH_METADATA_KEY).map_err(|e| WeightsError::Decode {
            path: path.to_path_buf(),
            detail: format!("{e:#}"),
        })?;
    let arch: Arch = serde_json::from_str(&meta).map_err(|e| WeightsError::Arch {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let shape_err = |e: anyhow::Error| WeightsError::Shape {
        path: path.to_path_buf(),
        detail: format!("{e:#}"),
    };
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let mut net = Backbone::new(arch, &dev, &mut rng).map_err(shape_err)?;
    net.load_tensors(&tensors).map_err(shape_err)?;
    Ok(net)
}

/// The trained network's own embeddings (candle, inference mode) of NHWC u8 images.
pub fn reference_embeddings(
    net: &Backbone,
    images: &shared::data::ImageSet,
) -> anyhow::Result<Vec<f32>> {
    trainer::training::model::embed(net, images, 64)
}

/// NHWC f32 input in raw 0..255 pixel values: what the exported graphs take.
pub fn raw_input(images: &shared::data::ImageSet, indices: &[usize]) -> Vec<f32> {
    indices
        .iter()
        .flat_map(|&i| images.image(i).iter().map(|&v| f32::from(v)))
        .collect()
}
