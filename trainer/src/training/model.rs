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

/// How convolutions are computed (forward and backward). `Im2col` is the default although
/// candle's conv2d measured faster in a short release benchmark (71 vs 57 training img/s,
/// 349 vs 259 forward img/s at batch 64; `trainer bench train --steps 10`, 2026-11-25):
/// inside the training loop, candle's conv2d made the process grow to 24 GB and get
/// OOM-killed within 120 steps of `trainer demo`, where Im2col stays flat. Unexplained yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKernel {
    /// candle's `conv2d` (its input gradient is a direct conv_transpose2d loop on CPU).
    Candle,
    /// Explicit im2col (shifted views stacked) and a matrix product: forward and backward
    /// are gemm calls, and no gradient is computed for the network's input.
    Im2col,
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
            kernel: ConvKernel::Im2col,
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

    /// Convolution `i` ('same', stride 1) over activations in the internal C, B, H, W layout.
    fn conv(&self, x: &Tensor, i: usize, k: usize) -> Result<Tensor> {
        let w = self.param(&format!("conv{i}.weight")).as_tensor();
        let b = self.param(&format!("conv{i}.bias")).as_tensor();
        let p = k / 2;
        let (c, bsz, h, wd) = x.dims4()?;
        let o = w.dim(0)?;
        match self.kernel {
            ConvKernel::Candle => {
                let y = x.transpose(0, 1)?.conv2d(w, p, 1, 1, 1)?;
                let y = y.broadcast_add(&b.reshape((1, o, 1, 1))?)?;
                Ok(y.transpose(0, 1)?.contiguous()?)
            }
            ConvKernel::Im2col => {
                let xp = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
                let mut views = Vec::with_capacity(k * k);
                for dy in 0..k {
                    for dx in 0..k {
                        views.push(xp.narrow(2, dy, h)?.narrow(3, dx, wd)?);
                    }
                }
                // [C, K*K, B, H, W] -> [C*K*K, B*H*W], rows ordered like the weight's
                // (c, kh, kw): one matrix product for the whole batch, in both directions.
                let cols = Tensor::stack(&views, 1)?.reshape((c * k * k, bsz * h * wd))?;
                let wm = w.reshape((o, c * k * k))?;
                let y = wm.matmul(&cols)?.broadcast_add(&b.reshape((o, 1))?)?;
                Ok(y.reshape((o, bsz, h, wd))?)
            }
        }
    }

    /// Batch norm over activations in the C, B, H, W layout (statistics per channel row).
    fn batch_norm(&mut self, x: &Tensor, i: usize, train: bool) -> Result<Tensor> {
        let shape = x.dims().to_vec();
        let c = shape[0];
        let x = x.reshape((c, ()))?;
        let n = x.dim(1)? as f64;
        let gamma = self
            .param(&format!("bn{i}.weight"))
            .as_tensor()
            .reshape((c, 1))?;
        let beta = self
            .param(&format!("bn{i}.bias"))
            .as_tensor()
            .reshape((c, 1))?;
        let im = self.running_index(&format!("bn{i}.running_mean"));
        let iv = self.running_index(&format!("bn{i}.running_var"));
        let (mean, var) = if train {
            let mean = x.mean_keepdim(1)?;
            let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
            let m = BN_MOMENTUM;
            let unbiased = (var.detach().flatten_all()? * (n / (n - 1.0).max(1.0)))?;
            let rm = ((&self.running[im].1 * (1.0 - m))? + (mean.detach().flatten_all()? * m)?)?;
            let rv = ((&self.running[iv].1 * (1.0 - m))? + (unbiased * m)?)?;
            self.running[im].1 = rm;
            self.running[iv].1 = rv;
            (mean, var)
        } else {
            (
                self.running[im].1.reshape((c, 1))?,
                self.running[iv].1.reshape((c, 1))?,
            )
        };
        let xn = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + BN_EPS)?.sqrt()?)?;
        Ok(xn
            .broadcast_mul(&gamma)?
            .broadcast_add(&beta)?
            .reshape(shape)?)
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
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), &self.device)?;
        Ok((x * mask)?)
    }

    fn block(&mut self, x: &Tensor, i: usize, k: usize, train: bool) -> Result<Tensor> {
        let mut y = self.conv(x, i, k)?;
        if self.arch.batch_norm {
            y = self.batch_norm(&y, i, train)?;
        }
        Ok(y.relu()?)
    }

    fn forward_impl(&mut self, x: &Tensor, mut rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let train = rng.is_some();
        // Internally activations are C, B, H, W: per-channel reductions (bias and batch-norm
        // gradients) run over contiguous rows, and a convolution is one matrix product.
        let x = x.transpose(0, 1)?.contiguous()?;
        let y = self.block(&x, 1, 5, train)?;
        let y = self.block(&y, 2, 3, train)?.max_pool2d(2)?;
        let y = self.dropout(&y, rng.as_deref_mut())?;
        let y = self.block(&y, 3, 3, train)?.max_pool2d(2)?;
        let y = self.dropout(&y, rng)?;
        // back to B, C, H, W, flattened in C, H, W order
        let y = y.transpose(0, 1)?.contiguous()?.flatten_from(1)?;
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
    fn im2col_matches_candle_conv_forward_and_backward() {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut net = Backbone::new(tiny_arch(false), &dev, &mut rng).unwrap();
        let x: Vec<f32> = (0..2 * 3 * 16 * 16)
            .map(|_| rng.random_range(-0.5..0.5))
            .collect();
        let x = Tensor::from_vec(x, (2, 3, 16, 16), &dev).unwrap();
        let mut outs = Vec::new();
        for kernel in [ConvKernel::Candle, ConvKernel::Im2col] {
            net.set_kernel(kernel);
            let y = net.forward(&x).unwrap();
            let g = y.sum_all().unwrap().backward().unwrap();
            let gw = g.get(net.params()[0].1.as_tensor()).unwrap().clone();
            outs.push((y, gw));
        }
        let dy = (&outs[0].0 - &outs[1].0).unwrap().abs().unwrap();
        assert!(dy.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-4);
        let dg = (&outs[0].1 - &outs[1].1).unwrap().abs().unwrap();
        assert!(dg.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-3);
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
