//! The embedding network: the reference architecture behind one [`Backbone`] type, so that
//! faster convolution kernels can be swapped in without touching the training loop.
//!
//! ```text
//! input  u8 NHWC [B, S, S, 3] -> f32 NCHW [B, 3, S, S], v = x / 255 - 0.5  (see normalize_pixel)
//! conv1  5x5, 3 -> 32, 'same' (pad 2), [bn1], ReLU
//! conv2  3x3, 32 -> 64, 'same' (pad 1), [bn2], ReLU, maxpool 2x2 (stride 2), dropout
//! conv3  3x3, 64 -> 64, 'same' (pad 1), [bn3], ReLU, maxpool 2x2 (stride 2), dropout
//! flatten in C, H, W order (PyTorch / ONNX NCHW order): F = 64 * (S/4)^2
//! dense  F -> E, [L2 normalisation: y / sqrt(sum(y^2) + 1e-12)]
//! ```
//!
//! # Weights file (safetensors, all F32, PyTorch layouts)
//! | name | shape |
//! | --- | --- |
//! | `conv1.weight` | `[32, 3, 5, 5]` (out, in, kh, kw) |
//! | `conv1.bias` | `[32]` |
//! | `conv2.weight` | `[64, 32, 3, 3]` |
//! | `conv2.bias` | `[64]` |
//! | `conv3.weight` | `[64, 64, 3, 3]` |
//! | `conv3.bias` | `[64]` |
//! | `bnN.weight`, `bnN.bias`, `bnN.running_mean`, `bnN.running_var` (N = 1, 2, 3; only with batch norm) | `[C]` |
//! | `dense.weight` | `[E, F]` (out, in) |
//! | `dense.bias` | `[E]` |
//!
//! Batch norm at inference: `y = (x - running_mean) / sqrt(running_var + BN_EPS) * weight + bias`,
//! applied to the convolution output (bias included) before the ReLU; it folds into the
//! convolution. The file's metadata holds one key, [`ARCH_METADATA_KEY`], whose value is the
//! JSON of [`Arch`] (side, embedding_dim, batch_norm, l2_normalize, dropout, input
//! normalisation).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use shared::data::ImageSet;

use super::config::ModelConfig;
use super::kernels::{max_pool2d_exact, BlockSpec, ConvBlock};

/// Pixel normalisation: `v = x * INPUT_SCALE + INPUT_OFFSET` for a u8 channel value `x`.
pub const INPUT_SCALE: f32 = 1.0 / 255.0;
/// See [`INPUT_SCALE`].
pub const INPUT_OFFSET: f32 = -0.5;
/// Epsilon of the batch-norm layers (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;
/// Momentum of the running batch-norm statistics (PyTorch's convention).
pub const BN_MOMENTUM: f64 = 0.1;
/// Epsilon inside the L2 normalisation of the embedding.
pub const L2_EPS: f64 = 1e-12;
/// The safetensors metadata key holding the [`Arch`] JSON.
pub const ARCH_METADATA_KEY: &str = "edgecp.arch";

/// The network's input normalisation of one u8 channel value.
#[inline]
pub fn normalize_pixel(x: u8) -> f32 {
    f32::from(x) * INPUT_SCALE + INPUT_OFFSET
}

/// Everything needed to rebuild the network from its weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arch {
    pub side: usize,
    pub embedding_dim: usize,
    pub batch_norm: bool,
    pub l2_normalize: bool,
    pub dropout: f64,
    /// Always "x/255-0.5, NCHW, RGB".
    pub input: String,
}

impl Arch {
    pub fn new(side: usize, model: &ModelConfig) -> Result<Self> {
        if side < 4 || !side.is_multiple_of(4) {
            bail!("image side must be a positive multiple of 4, got {side}");
        }
        Ok(Arch {
            side,
            embedding_dim: model.embedding_dim,
            batch_norm: model.batch_norm,
            l2_normalize: model.l2_normalize,
            dropout: model.dropout,
            input: "x/255-0.5, NCHW, RGB".to_string(),
        })
    }

    /// Inputs of the dense layer.
    pub fn flat_features(&self) -> usize {
        64 * (self.side / 4) * (self.side / 4)
    }

    /// (name, shape) of every trainable parameter, in a fixed order.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = Vec::new();
        let convs = [(1, 32, 3, 5), (2, 64, 32, 3), (3, 64, 64, 3)];
        for (i, o, c, k) in convs {
            v.push((format!("conv{i}.weight"), vec![o, c, k, k]));
            v.push((format!("conv{i}.bias"), vec![o]));
            if self.batch_norm {
                v.push((format!("bn{i}.weight"), vec![o]));
                v.push((format!("bn{i}.bias"), vec![o]));
            }
        }
        v.push((
            "dense.weight".into(),
            vec![self.embedding_dim, self.flat_features()],
        ));
        v.push(("dense.bias".into(), vec![self.embedding_dim]));
        v
    }
}

/// How the convolution blocks are computed (forward and backward); the numbers agree to
/// float rounding (tests in `kernels`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKernel {
    /// candle's own ops: conv2d (its CPU input gradient is a direct conv_transpose2d
    /// loop), broadcast arithmetic for batch norm, relu, and max-pool from reshape + max
    /// (candle's max_pool2d has a wrong gradient: see [`max_pool2d_exact`]). Kept as the
    /// reference the fused kernel is tested and benchmarked against.
    Candle,
    /// [`kernels::ConvBlock`]: one fused op per block (im2col + gemm per image, batch norm,
    /// ReLU and max-pool with recorded argmax, all gradients in one backward pass, no input
    /// gradient for the first layer). The default.
    Fused,
}

/// The embedding network (see the module documentation for layers and weight names).
pub struct Backbone {
    arch: Arch,
    device: Device,
    kernel: ConvKernel,
    params: Vec<(String, Var)>,
    /// `bnN.running_mean` / `bnN.running_var`, updated in training mode.
    running: Vec<(String, Tensor)>,
}

impl std::fmt::Debug for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backbone")
            .field("arch", &self.arch)
            .field("kernel", &self.kernel)
            .finish_non_exhaustive()
    }
}

fn glorot(rng: &mut ChaCha8Rng, n: usize, fan_in: usize, fan_out: usize) -> Vec<f32> {
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
    (0..n).map(|_| rng.random_range(-limit..limit)).collect()
}

impl Backbone {
    /// A freshly initialised network: Glorot-uniform weights (Keras' default, as the
    /// reference), zero biases, batch norm at identity; the numbers come from `rng`.
    pub fn new(arch: Arch, device: &Device, rng: &mut ChaCha8Rng) -> Result<Self> {
        let mut params = Vec::new();
        for (name, shape) in arch.param_shapes() {
            let n: usize = shape.iter().product();
            let data = if name.ends_with(".bias") {
                vec![0f32; n]
            } else if name.starts_with("bn") {
                vec![1f32; n]
            } else if name == "dense.weight" {
                glorot(rng, n, shape[1], shape[0])
            } else {
                let rf = shape[2] * shape[3];
                glorot(rng, n, shape[1] * rf, shape[0] * rf)
            };
            let t = Tensor::from_vec(data, shape.as_slice(), device)?;
            params.push((name, Var::from_tensor(&t)?));
        }
        let mut running = Vec::new();
        if arch.batch_norm {
            for (i, c) in [(1, 32), (2, 64), (3, 64)] {
                running.push((
                    format!("bn{i}.running_mean"),
                    Tensor::zeros(c, DType::F32, device)?,
                ));
                running.push((
                    format!("bn{i}.running_var"),
                    Tensor::ones(c, DType::F32, device)?,
                ));
            }
        }
        Ok(Backbone {
            arch,
            device: device.clone(),
            // the fused blocks are CPU kernels; on a GPU candle's own ops run
            kernel: if device.is_cpu() {
                ConvKernel::Fused
            } else {
                ConvKernel::Candle
            },
            params,
            running,
        })
    }

    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn kernel(&self) -> ConvKernel {
        self.kernel
    }

    /// Selects the convolution implementation (the numbers agree to float rounding).
    pub fn set_kernel(&mut self, kernel: ConvKernel) {
        self.kernel = kernel;
    }

    /// Trainable parameters (name, variable) in a fixed order.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    fn param(&self, name: &str) -> &Var {
        &self
            .params
            .iter()
            .find(|(n, _)| n == name)
            .expect("parameter names are fixed by the architecture")
            .1
    }

    fn running_index(&self, name: &str) -> usize {
        self.running
            .iter()
            .position(|(n, _)| n == name)
            .expect("running statistics exist with batch norm")
    }

    /// Block `i`: conv KxK ('same', stride 1) + bias, [batch norm], ReLU, [max-pool
    /// `pool`], over NCHW activations.
    fn block(
        &mut self,
        x: &Tensor,
        i: usize,
        k: usize,
        pool: usize,
        train: bool,
    ) -> Result<Tensor> {
        let w = self.param(&format!("conv{i}.weight")).as_tensor().clone();
        let b = self.param(&format!("conv{i}.bias")).as_tensor().clone();
        let o = w.dim(0)?;
        let bn = self.arch.batch_norm;
        match self.kernel {
            ConvKernel::Fused => {
                let spec = BlockSpec {
                    kernel: k,
                    pad: k / 2,
                    stride: 1,
                    batch_norm: bn && train,
                    bn_eps: BN_EPS,
                    pool,
                    // the first block's input is data: its gradient would be thrown away
                    input_grad: i > 1,
                    train,
                };
                let (w, p) = if bn && train {
                    let gamma = self.param(&format!("bn{i}.weight")).as_tensor();
                    let beta = self.param(&format!("bn{i}.bias")).as_tensor();
                    (w, Tensor::stack(&[&b, gamma, beta], 0)?)
                } else if bn {
                    // Inference: the running statistics fold into the convolution.
                    let (scale, shift) = self.bn_inference_affine(i)?;
                    let w = w.broadcast_mul(&scale.reshape((o, 1, 1, 1))?)?;
                    (w, ((b * &scale)? + shift)?)
                } else {
                    (w, b)
                };
                let block = ConvBlock::new(spec);
                let y = block.apply(x, &w, &p)?;
                if bn && train {
                    let stats = block
                        .batch_stats()
                        .context("conv block kept no batch statistics")?;
                    let mean = Tensor::from_vec(stats.mean, o, &self.device)?;
                    let var = Tensor::from_vec(stats.var, o, &self.device)?;
                    self.update_running(i, &mean, &var, stats.count)?;
                }
                Ok(y)
            }
            ConvKernel::Candle => {
                let y = x
                    .conv2d(&w, k / 2, 1, 1, 1)?
                    .broadcast_add(&b.reshape((1, o, 1, 1))?)?;
                let y = if bn {
                    self.batch_norm(&y, i, train)?
                } else {
                    y
                };
                let y = y.relu()?;
                Ok(if pool > 1 {
                    max_pool2d_exact(&y, pool)?
                } else {
                    y
                })
            }
        }
    }

    /// Inference batch norm as `y * scale + shift` per channel.
    fn bn_inference_affine(&self, i: usize) -> Result<(Tensor, Tensor)> {
        let gamma = self.param(&format!("bn{i}.weight")).as_tensor();
        let beta = self.param(&format!("bn{i}.bias")).as_tensor();
        let rm = &self.running[self.running_index(&format!("bn{i}.running_mean"))].1;
        let rv = &self.running[self.running_index(&format!("bn{i}.running_var"))].1;
        let scale = (gamma / (rv + BN_EPS)?.sqrt()?)?;
        let shift = (beta - (rm * &scale)?)?;
        Ok((scale, shift))
    }

    /// Running statistics after a training batch with per-channel `mean` and biased `var`
    /// over `n` values (PyTorch's convention: the running variance is unbiased).
    fn update_running(&mut self, i: usize, mean: &Tensor, var: &Tensor, n: usize) -> Result<()> {
        let im = self.running_index(&format!("bn{i}.running_mean"));
        let iv = self.running_index(&format!("bn{i}.running_var"));
        let m = BN_MOMENTUM;
        let n = n as f64;
        let unbiased = (var.detach() * (n / (n - 1.0).max(1.0)))?;
        let rm = ((&self.running[im].1 * (1.0 - m))? + (mean.detach() * m)?)?;
        let rv = ((&self.running[iv].1 * (1.0 - m))? + (unbiased * m)?)?;
        self.running[im].1 = rm;
        self.running[iv].1 = rv;
        Ok(())
    }

    /// Batch norm with candle's ops over NCHW activations (the `Candle` kernel).
    fn batch_norm(&mut self, x: &Tensor, i: usize, train: bool) -> Result<Tensor> {
        let c = x.dim(1)?;
        if !train {
            let (scale, shift) = self.bn_inference_affine(i)?;
            return Ok(x
                .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
                .broadcast_add(&shift.reshape((1, c, 1, 1))?)?);
        }
        let gamma = self.param(&format!("bn{i}.weight")).as_tensor().clone();
        let beta = self.param(&format!("bn{i}.bias")).as_tensor().clone();
        let mean = x.mean_keepdim((0, 2, 3))?;
        let dev = x.broadcast_sub(&mean)?;
        let var = dev.sqr()?.mean_keepdim((0, 2, 3))?;
        let n = x.elem_count() / c;
        self.update_running(i, &mean.flatten_all()?, &var.flatten_all()?, n)?;
        Ok(dev
            .broadcast_div(&(var + BN_EPS)?.sqrt()?)?
            .broadcast_mul(&gamma.reshape((1, c, 1, 1))?)?
            .broadcast_add(&beta.reshape((1, c, 1, 1))?)?)
    }

    fn dropout(&self, x: &Tensor, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let p = self.arch.dropout;
        let Some(rng) = rng else {
            return Ok(x.clone());
        };
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = (1.0 / (1.0 - p)) as f32;
        // Four 16-bit draws per 64-bit random number (p is rounded to 1/65536): a draw
        // per element as f64 cost several ms per step.
        let drop_below = (p * 65536.0).round() as u64;
        let n = x.elem_count();
        let mut mask = Vec::with_capacity(n + 3);
        while mask.len() < n {
            let r = rng.random::<u64>();
            for j in 0..4 {
                let v = (r >> (16 * j)) & 0xffff;
                mask.push(if v < drop_below { 0.0 } else { keep });
            }
        }
        mask.truncate(n);
        let mask = Tensor::from_vec(mask, x.shape(), &self.device)?;
        Ok((x * mask)?)
    }

    fn forward_impl(&mut self, x: &Tensor, mut rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let train = rng.is_some();
        let y = self.block(x, 1, 5, 1, train)?;
        let y = self.block(&y, 2, 3, 2, train)?;
        let y = self.dropout(&y, rng.as_deref_mut())?;
        let y = self.block(&y, 3, 3, 2, train)?;
        let y = self.dropout(&y, rng)?;
        // NCHW flattened in C, H, W order (PyTorch's and ONNX's)
        let y = y.flatten_from(1)?;
        let w = self.param("dense.weight").as_tensor();
        let b = self.param("dense.bias").as_tensor();
        let y = y.matmul(&w.t()?)?.broadcast_add(b)?;
        if self.arch.l2_normalize {
            let norm = (y.sqr()?.sum_keepdim(1)? + L2_EPS)?.sqrt()?;
            Ok(y.broadcast_div(&norm)?)
        } else {
            Ok(y)
        }
    }

    /// Training-mode forward pass over NCHW f32 input: batch statistics (and updates of the
    /// running statistics), dropout masks drawn from `rng`.
    pub fn forward_train(&mut self, x: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        self.forward_impl(x, Some(rng))
    }

    /// Inference forward pass over NCHW f32 input (running statistics, no dropout).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Inference never mutates: a shallow clone shares the tensors.
        let mut me = Backbone {
            arch: self.arch.clone(),
            device: self.device.clone(),
            kernel: self.kernel,
            params: self.params.clone(),
            running: self.running.clone(),
        };
        me.forward_impl(&x.detach(), None)
    }

    /// All tensors of the weights file (parameters and running statistics), sorted by name.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|(n, var)| (n.clone(), var.as_tensor().clone()))
            .chain(self.running.iter().cloned())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Replaces every parameter and running statistic from `tensors` (names and shapes
    /// must match the architecture).
    pub fn load_tensors(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in &self.params {
            let t = tensors
                .get(name)
                .with_context(|| format!("weights: missing tensor {name}"))?;
            if t.dims() != var.dims() {
                bail!(
                    "weights: {name} has shape {:?}, expected {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            var.set(&t.to_device(&self.device)?)?;
        }
        for (name, r) in &mut self.running {
            let t = tensors
                .get(name)
                .with_context(|| format!("weights: missing tensor {name}"))?;
            if t.dims() != r.dims() {
                bail!("weights: {name} has shape {:?}", t.dims());
            }
            *r = t.to_device(&self.device)?;
        }
        Ok(())
    }

    /// The weights file's bytes (deterministic: same weights -> same bytes).
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let meta = serde_json::to_string(&self.arch)?;
        encode_safetensors(&self.named_tensors(), ARCH_METADATA_KEY, &meta)
    }

    /// Writes the weights atomically (temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_safetensors_bytes()?)
    }

    /// Reads a weights file written by [`Backbone::save`].
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading weights {}", path.display()))?;
        let (tensors, meta) = decode_safetensors(&bytes, device, ARCH_METADATA_KEY)
            .with_context(|| format!("decoding weights {}", path.display()))?;
        let arch: Arch = serde_json::from_str(&meta).context("weights: bad arch metadata")?;
        let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        let mut me = Backbone::new(arch, device, &mut rng)?;
        me.load_tensors(&tensors)?;
        Ok(me)
    }
}

/// Writes `bytes` to `path` via a temporary file in the same folder and a rename, so that
/// readers (and a resume after SIGKILL) never see a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().ok();
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// safetensors bytes of F32 tensors with one metadata entry (a single key keeps the header
/// byte-stable).
pub fn encode_safetensors(tensors: &[(String, Tensor)], key: &str, value: &str) -> Result<Vec<u8>> {
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        data.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let views = data
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let meta = HashMap::from([(key.to_string(), value.to_string())]);
    Ok(safetensors::tensor::serialize(views, Some(meta))?)
}

/// Reads F32 tensors and the metadata value under `key`.
pub fn decode_safetensors(
    bytes: &[u8],
    device: &Device,
    key: &str,
) -> Result<(HashMap<String, Tensor>, String)> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)?;
    let meta = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(key).cloned())
        .with_context(|| format!("safetensors metadata lacks {key}"))?;
    let st = safetensors::SafeTensors::deserialize(bytes)?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            bail!("tensor {name}: expected F32, found {:?}", view.dtype());
        }
        let v: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, Tensor::from_vec(v, view.shape(), device)?);
    }
    Ok((out, meta))
}

/// NCHW f32 input for the images at `indices` (normalised with [`normalize_pixel`]).
pub fn batch_tensor(set: &ImageSet, indices: &[usize], device: &Device) -> Result<Tensor> {
    let s = set.side;
    let plane = s * s;
    let mut data = vec![0f32; indices.len() * 3 * plane];
    for (b, &i) in indices.iter().enumerate() {
        let img = set.image(i);
        let out = &mut data[b * 3 * plane..(b + 1) * 3 * plane];
        for (p, px) in img.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + p] = normalize_pixel(px[c]);
            }
        }
    }
    Ok(Tensor::from_vec(data, (indices.len(), 3, s, s), device)?)
}

/// Embeddings of every image of `images` (inference mode), `len * E` floats, computed
/// `batch` images at a time.
pub fn embed(model: &Backbone, images: &ImageSet, batch: usize) -> Result<Vec<f32>> {
    if images.side != model.arch.side {
        bail!(
            "images are {}x{}, the network expects {}x{}",
            images.side,
            images.side,
            model.arch.side,
            model.arch.side
        );
    }
    let batch = batch.max(1);
    let mut out = Vec::with_capacity(images.len() * model.arch.embedding_dim);
    let idx: Vec<usize> = (0..images.len()).collect();
    for chunk in idx.chunks(batch) {
        let x = batch_tensor(images, chunk, &model.device)?;
        let y = model.forward(&x)?;
        out.extend(y.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn tiny_arch(bn: bool) -> Arch {
        let m = ModelConfig {
            embedding_dim: 8,
            batch_norm: bn,
            dropout: 0.25,
            l2_normalize: true,
        };
        Arch::new(16, &m).unwrap()
    }

    #[test]
    fn fused_kernel_matches_candle_ops_through_the_network() {
        for bn in [false, true] {
            fused_matches_candle(bn);
        }
    }

    /// One training-mode pass (same dropout masks), its gradients, then an inference pass
    /// with the running statistics that pass left: the two kernels must agree.
    fn fused_matches_candle(bn: bool) {
        let dev = Device::Cpu;
        let mut data_rng = ChaCha8Rng::seed_from_u64(3);
        let x: Vec<f32> = (0..4 * 3 * 16 * 16)
            .map(|_| data_rng.random_range(-0.5..0.5))
            .collect();
        let x = Tensor::from_vec(x, (4, 3, 16, 16), &dev).unwrap();
        let mut outs = Vec::new();
        let mut names = Vec::new();
        for kernel in [ConvKernel::Candle, ConvKernel::Fused] {
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let mut net = Backbone::new(tiny_arch(bn), &dev, &mut rng).unwrap();
            net.set_kernel(kernel);
            let y = net.forward_train(&x, &mut rng).unwrap();
            // a weighted sum: sum(y^2) would be constant under the L2 normalisation
            let r: Vec<f32> = (0..y.elem_count())
                .map(|i| (i as f32 * 0.37).sin())
                .collect();
            let r = Tensor::from_vec(r, y.shape(), &dev).unwrap();
            let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
            let grads: Vec<Tensor> = net
                .params()
                .iter()
                .map(|(n, v)| {
                    g.get(v.as_tensor())
                        .unwrap_or_else(|| panic!("{n}"))
                        .clone()
                })
                .collect();
            let eval = net.forward(&x).unwrap();
            outs.push((y, grads, eval));
            names = net.params().iter().map(|(n, _)| n.clone()).collect();
        }
        let max_abs = |a: &Tensor, b: &Tensor| -> f32 {
            let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
            d.max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        let scale = |a: &Tensor| -> f32 {
            let d = a.abs().unwrap().flatten_all().unwrap();
            d.max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-6)
        };
        let (c, f) = (&outs[0], &outs[1]);
        assert!(
            max_abs(&c.0, &f.0) < 1e-4,
            "bn {bn}: training outputs differ"
        );
        assert!(
            max_abs(&c.2, &f.2) < 1e-4,
            "bn {bn}: inference outputs differ"
        );
        let weight_scale = scale(&c.1[0]);
        for (i, (gc, gf)) in c.1.iter().zip(&f.1).enumerate() {
            let name = &names[i];
            if bn && name.starts_with("conv") && name.ends_with(".bias") {
                // zero up to rounding: batch norm removes the bias
                assert!(scale(gf) < 1e-4 * weight_scale, "{name}: {}", scale(gf));
                continue;
            }
            let e = max_abs(gc, gf) / scale(gc);
            assert!(
                e < 1e-3,
                "bn {bn}: gradient of {name} differs by {e} (relative)"
            );
        }
    }

    #[test]
    fn weights_round_trip_with_stable_names() {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let net = Backbone::new(tiny_arch(true), &dev, &mut rng).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        net.save(&path).unwrap();
        let back = Backbone::load(&path, &dev).unwrap();
        assert_eq!(back.arch(), net.arch());
        assert_eq!(
            back.to_safetensors_bytes().unwrap(),
            net.to_safetensors_bytes().unwrap()
        );
        let names: Vec<String> = net.named_tensors().into_iter().map(|(n, _)| n).collect();
        for n in [
            "conv1.weight",
            "conv1.bias",
            "conv2.weight",
            "conv3.weight",
            "bn1.running_mean",
            "bn3.running_var",
            "dense.weight",
            "dense.bias",
        ] {
            assert!(names.iter().any(|m| m == n), "{n}");
        }
        let x = batch_tensor(
            &{
                let mut s = ImageSet::new(16);
                s.push(&[128u8; 16 * 16 * 3], 0, "t".into(), "f".into());
                s
            },
            &[0],
            &dev,
        )
        .unwrap();
        let y = net.forward(&x).unwrap();
        assert_eq!(y.dims(), &[1, 8]);
        let n: f32 = y.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!((n - 1.0).abs() < 1e-4);
    }
}
