//! The fused convolution block as one candle op: convolution + bias, optional batch
//! normalisation on batch statistics, ReLU, optional max-pool; forward and backward.
//!
//! Fusing keeps candle's autograd to one node per block: no intermediate tensors, no
//! per-op gradient buffers, and the whole backward of an image (pool scatter, batch-norm
//! gradient, weight gradient, input gradient) runs while its data is in cache.
//!
//! Layout is NCHW (PyTorch's and the ONNX export's): every image's activations are one
//! contiguous block, so work is split across threads by image with no shared writes.
//! Reductions over the batch (batch-norm statistics, weight and bias gradients) are summed
//! per chunk of images and the chunks in a fixed order: for a given thread count, results
//! are bit-for-bit reproducible.

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::im2col::{col2im, im2col, ConvGeom};
use super::matmul::{matmul, transpose, Mat, MatMut};

/// What one block computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockSpec {
    /// Square kernel size K.
    pub kernel: usize,
    pub pad: usize,
    pub stride: usize,
    /// Batch normalisation with the batch's statistics (training mode). At inference the
    /// running statistics are folded into the weights instead and this is false.
    pub batch_norm: bool,
    pub bn_eps: f64,
    /// Window and stride of the max-pool after the ReLU; 0 or 1: no pooling.
    pub pool: usize,
    /// Compute the gradient of the block's input (false for the first layer: its input is
    /// data, and that gradient would be thrown away).
    pub input_grad: bool,
    /// Keep what the backward pass needs (pre-normalisation outputs, pool argmax).
    pub train: bool,
}

/// Batch statistics of a training-mode forward pass, for the running averages.
#[derive(Clone, Debug)]
pub struct BatchStats {
    pub mean: Vec<f32>,
    /// Biased (divided by `count`).
    pub var: Vec<f32>,
    /// Values per channel (batch x output pixels).
    pub count: usize,
}

/// Forward results the backward pass reads.
struct Saved {
    /// Convolution outputs before the bias and normalisation, `[B, O, Ho*Wo]` (batch
    /// norm only).
    z: Vec<f32>,
    /// Channel means of `z`.
    mean: Vec<f32>,
    /// Channel means of the convolution output with its bias (the reported statistic).
    stat_mean: Vec<f32>,
    var: Vec<f32>,
    invstd: Vec<f32>,
    /// Index inside its pool window of each pooled output's maximum (pooling only).
    argmax: Vec<u8>,
    count: usize,
}

/// One block invocation: the spec plus what its forward pass saved.
pub struct ConvBlock {
    spec: BlockSpec,
    saved: Mutex<Option<Saved>>,
}

impl std::fmt::Debug for ConvBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvBlock")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// The candle op; it shares the block so the caller can read the batch statistics.
struct BlockOp(Arc<ConvBlock>);

/// Shapes of one invocation.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    o: usize,
    g: ConvGeom,
    pool: usize,
    hp: usize,
    wp: usize,
}

impl Dims {
    fn x_len(&self) -> usize {
        self.g.c * self.g.h * self.g.w
    }
    fn hw(&self) -> usize {
        self.g.cols()
    }
    fn z_len(&self) -> usize {
        self.o * self.hw()
    }
    fn out_len(&self) -> usize {
        self.o * self.hp * self.wp
    }
}

impl ConvBlock {
    pub fn new(spec: BlockSpec) -> Arc<Self> {
        Arc::new(ConvBlock {
            spec,
            saved: Mutex::new(None),
        })
    }

    /// Applies the block to `x` `[B, C, H, W]` with weights `w` `[O, C, K, K]` and `p`:
    /// the bias `[O]`, or with batch norm `[3, O]` = (bias, gamma, beta).
    pub fn apply(self: &Arc<Self>, x: &Tensor, w: &Tensor, p: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let w = w.contiguous()?;
        let p = p.contiguous()?;
        x.apply_op3_arc(&w, &p, Arc::new(Box::new(BlockOp(self.clone()))))
    }

    /// The statistics of the last training-mode forward pass with batch norm.
    pub fn batch_stats(&self) -> Option<BatchStats> {
        let saved = self.saved.lock().ok()?;
        let s = saved.as_ref()?;
        if !self.spec.batch_norm {
            return None;
        }
        Some(BatchStats {
            mean: s.stat_mean.clone(),
            var: s.var.clone(),
            count: s.count,
        })
    }

    fn dims(&self, x: &[usize], w: &[usize], p: &[usize]) -> Result<Dims> {
        let s = &self.spec;
        let &[b, c, h, wd] = x else {
            bail!("conv block: input must be [B, C, H, W], got {x:?}")
        };
        let &[o, wc, kh, kw] = w else {
            bail!("conv block: weights must be [O, C, K, K], got {w:?}")
        };
        if wc != c || kh != s.kernel || kw != s.kernel {
            bail!(
                "conv block: weights {w:?} do not fit input {x:?} and kernel {}",
                s.kernel
            );
        }
        let want_p: &[usize] = if s.batch_norm { &[3, o] } else { &[o] };
        if p != want_p {
            bail!("conv block: parameters must be {want_p:?}, got {p:?}");
        }
        if b == 0 || c == 0 || o == 0 {
            bail!("conv block: empty tensor (input {x:?}, weights {w:?})");
        }
        let Some(g) = ConvGeom::new(c, h, wd, s.kernel, s.pad, s.stride) else {
            bail!(
                "conv block: kernel {} with padding {} and stride {} does not fit a {h}x{wd} input",
                s.kernel,
                s.pad,
                s.stride
            )
        };
        let pool = s.pool.max(1);
        if pool > 16 || g.ho < pool || g.wo < pool {
            bail!(
                "conv block: pool {pool} does not fit a {}x{} output (at most 16)",
                g.ho,
                g.wo
            );
        }
        Ok(Dims {
            b,
            o,
            g,
            pool,
            hp: g.ho / pool,
            wp: g.wo / pool,
        })
    }

    /// Without batch statistics (no batch norm, or inference with batch norm folded into
    /// the weights) every image is finished while its convolution output is in cache:
    /// no full-batch intermediate is written or read back.
    fn forward_direct(&self, x: &[f32], w: &[f32], bias: &[f32], d: &Dims) -> Vec<f32> {
        let (o, hw, rows) = (d.o, d.hw(), d.g.rows());
        let (xl, ol) = (d.x_len(), d.out_len());
        let (per, gt) = chunking(d.b);
        let ones = vec![1f32; o];
        let mut out = vec![0f32; d.b * ol];
        let mut argmax = vec![0u8; if d.pool > 1 { d.b * ol } else { 0 }];
        let argmax_chunks = optional_chunks(&mut argmax, d.pool > 1, per * ol, d.b.div_ceil(per));
        out.par_chunks_mut(per * ol)
            .zip(argmax_chunks)
            .zip(x.par_chunks(per * xl))
            .for_each(|((oc, mut ac), xc)| {
                let mut cols = Scratch::new(rows * hw);
                let mut zb = Scratch::new(o * hw);
                for (i, (ob, xb)) in oc.chunks_mut(ol).zip(xc.chunks(xl)).enumerate() {
                    conv_image(&d.g, o, w, xb, &mut cols, &mut zb, gt);
                    let ab = ac.as_deref_mut().map(|a| &mut a[i * ol..(i + 1) * ol]);
                    activate(&zb, &ones, bias, d, ob, ab);
                }
            });
        self.keep(Saved {
            z: vec![],
            mean: vec![],
            stat_mean: vec![],
            var: vec![],
            invstd: vec![],
            argmax,
            count: d.b * hw,
        });
        out
    }

    /// Stores what the backward pass needs, in training mode only.
    fn keep(&self, saved: Saved) {
        if self.spec.train {
            if let Ok(mut slot) = self.saved.lock() {
                *slot = Some(saved);
            }
        }
    }

    fn forward(&self, x: &[f32], w: &[f32], p: &[f32], d: &Dims) -> Vec<f32> {
        if self.spec.batch_norm {
            self.forward_bn(x, w, p, d)
        } else {
            self.forward_direct(x, w, &p[..d.o], d)
        }
    }

    /// With batch norm on batch statistics: the whole batch's convolution outputs are
    /// needed (and kept for the backward pass) before any image can be normalised.
    fn forward_bn(&self, x: &[f32], w: &[f32], p: &[f32], d: &Dims) -> Vec<f32> {
        let s = self.spec;
        let (o, hw, rows) = (d.o, d.hw(), d.g.rows());
        let (xl, zl, ol) = (d.x_len(), d.z_len(), d.out_len());
        let (per, gt) = chunking(d.b);
        let bias = &p[..o];

        // Convolution, one image at a time; channel sums for the batch mean. The bias is
        // not added: batch norm cancels it (it only shifts the reported mean).
        let mut z = vec![0f32; d.b * zl];
        let sums: Vec<Vec<f64>> = z
            .par_chunks_mut(per * zl)
            .zip(x.par_chunks(per * xl))
            .map(|(zc, xc)| {
                let mut cols = Scratch::new(rows * hw);
                let mut sums = vec![0f64; o];
                for (zb, xb) in zc.chunks_mut(zl).zip(xc.chunks(xl)) {
                    conv_image(&d.g, o, w, xb, &mut cols, zb, gt);
                    for (acc, row) in sums.iter_mut().zip(zb.chunks(hw)) {
                        *acc += f64::from(sum(row));
                    }
                }
                sums
            })
            .collect();

        // Batch statistics and the per-channel affine map applied before the ReLU.
        let count = d.b * hw;
        let mean: Vec<f32> = reduce(&sums, o)
            .into_iter()
            .map(|v| (v / count as f64) as f32)
            .collect();
        // Second pass for the variance: no cancellation when |mean| >> std.
        let sq: Vec<Vec<f64>> = z
            .par_chunks(per * zl)
            .map(|zc| {
                let mut acc = vec![0f64; o];
                for zb in zc.chunks(zl) {
                    for ((a, row), &m) in acc.iter_mut().zip(zb.chunks(hw)).zip(&mean) {
                        *a += f64::from(sum_sq_dev(row, m));
                    }
                }
                acc
            })
            .collect();
        let var: Vec<f32> = reduce(&sq, o)
            .into_iter()
            .map(|v| (v / count as f64) as f32)
            .collect();
        let invstd: Vec<f32> = var
            .iter()
            .map(|&v| (1.0 / (f64::from(v) + s.bn_eps).sqrt()) as f32)
            .collect();
        let (gamma, beta) = (&p[o..2 * o], &p[2 * o..3 * o]);
        let scale: Vec<f32> = gamma.iter().zip(&invstd).map(|(g, i)| g * i).collect();
        let shift: Vec<f32> = (0..o).map(|i| beta[i] - mean[i] * scale[i]).collect();

        // Normalise, ReLU, pool.
        let mut out = vec![0f32; d.b * ol];
        let mut argmax = vec![0u8; if d.pool > 1 { d.b * ol } else { 0 }];
        let argmax_chunks = optional_chunks(&mut argmax, d.pool > 1, per * ol, d.b.div_ceil(per));
        out.par_chunks_mut(per * ol)
            .zip(argmax_chunks)
            .zip(z.par_chunks(per * zl))
            .for_each(|((oc, mut ac), zc)| {
                for (i, (ob, zb)) in oc.chunks_mut(ol).zip(zc.chunks(zl)).enumerate() {
                    let ab = ac.as_deref_mut().map(|a| &mut a[i * ol..(i + 1) * ol]);
                    activate(zb, &scale, &shift, d, ob, ab);
                }
            });
        self.keep(Saved {
            z,
            stat_mean: mean.iter().zip(bias).map(|(m, b)| m + b).collect(),
            mean,
            var,
            invstd,
            argmax,
            count,
        });
        out
    }

    /// Gradients of (input if `input_grad`, weights, parameters).
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        p: &[f32],
        res: &[f32],
        dout: &[f32],
        d: &Dims,
        sv: &Saved,
    ) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
        let s = self.spec;
        let (o, hw, rows) = (d.o, d.hw(), d.g.rows());
        let (xl, zl, ol) = (d.x_len(), d.z_len(), d.out_len());
        let (per, gt) = chunking(d.b);
        let n_chunks = d.b.div_ceil(per);
        let plane = d.hp * d.wp;

        // Gradient at the pre-activation (through pool and ReLU), and the batch-norm sums.
        let mut dpre = Scratch::new(d.b * zl);
        let bn_sums: Vec<(Vec<f64>, Vec<f64>)> = dpre
            .par_chunks_mut(per * zl)
            .enumerate()
            .map(|(chunk, dc)| {
                let (mut dbeta, mut dgamma) = (vec![0f64; o], vec![0f64; o]);
                for (i, db) in dc.chunks_mut(zl).enumerate() {
                    let bi = chunk * per + i;
                    if d.pool > 1 {
                        // only the window maxima are written below
                        db.fill(0.0);
                    }
                    for ci in 0..o {
                        let drow = &mut db[ci * hw..(ci + 1) * hw];
                        let at = bi * ol + ci * plane;
                        let (grow, rrow) = (&dout[at..at + plane], &res[at..at + plane]);
                        if d.pool == 1 {
                            for ((dz, &g), &r) in drow.iter_mut().zip(grow).zip(rrow) {
                                *dz = if r > 0.0 { g } else { 0.0 };
                            }
                        } else {
                            let arow = &sv.argmax[at..at + plane];
                            for q in 0..plane {
                                if rrow[q] > 0.0 {
                                    let a = usize::from(arow[q]);
                                    let (py, px) = (q / d.wp, q % d.wp);
                                    let iy = py * d.pool + a / d.pool;
                                    let ix = px * d.pool + a % d.pool;
                                    drow[iy * d.g.wo + ix] = grow[q];
                                }
                            }
                        }
                        if s.batch_norm {
                            let zr = &sv.z[bi * zl + ci * hw..][..hw];
                            dbeta[ci] += f64::from(sum(drow));
                            let dzx = dot_dev(drow, zr, sv.mean[ci]);
                            dgamma[ci] += f64::from(dzx) * f64::from(sv.invstd[ci]);
                        }
                    }
                }
                (dbeta, dgamma)
            })
            .collect();
        let (dbeta, dgamma) = if s.batch_norm {
            let db: Vec<Vec<f64>> = bn_sums.iter().map(|(b, _)| b.clone()).collect();
            let dg: Vec<Vec<f64>> = bn_sums.iter().map(|(_, g)| g.clone()).collect();
            (reduce(&db, o), reduce(&dg, o))
        } else {
            (vec![], vec![])
        };

        // Per image: batch-norm input gradient, then weight, bias and input gradients.
        let mut dx = vec![0f32; if s.input_grad { d.b * xl } else { 0 }];
        let dx_chunks = optional_chunks(&mut dx, s.input_grad, per * xl, n_chunks);
        let n = sv.count as f64;
        let parts: Vec<(Vec<f32>, Vec<f64>)> = dpre
            .par_chunks_mut(per * zl)
            .zip(x.par_chunks(per * xl))
            .zip(dx_chunks)
            .enumerate()
            .map(|(chunk, ((dc, xc), mut dxc))| {
                let mut cols = Scratch::new(rows * hw);
                let mut dz_t = Scratch::new(o * hw);
                let mut dcols = Scratch::new(if s.input_grad { rows * hw } else { 0 });
                let mut dw_t = vec![0f32; rows * o];
                let mut dbias = vec![0f64; o];
                for (i, (dz, xb)) in dc.chunks_mut(zl).zip(xc.chunks(xl)).enumerate() {
                    let bi = chunk * per + i;
                    if s.batch_norm {
                        for ci in 0..o {
                            let k1 = p[o + ci] * sv.invstd[ci];
                            let mdb = (dbeta[ci] / n) as f32;
                            let mdg = (dgamma[ci] / n) as f32 * sv.invstd[ci];
                            let m = sv.mean[ci];
                            let zr = &sv.z[bi * zl + ci * hw..][..hw];
                            for (g, &zv) in dz[ci * hw..(ci + 1) * hw].iter_mut().zip(zr) {
                                *g = k1 * (*g - mdb - (zv - m) * mdg);
                            }
                        }
                    }
                    for (acc, row) in dbias.iter_mut().zip(dz.chunks(hw)) {
                        *acc += f64::from(sum(row));
                    }
                    // dW = dZ x cols^T, accumulated column-major (as dW^T) from dZ^T:
                    // the layout gemm streams without a transposing pack (measured per
                    // image on AVX-512: 46-56 GMAC/s, against 8-32 from dZ and a
                    // transposed view of cols into a row-major dW).
                    transpose(dz, o, hw, &mut dz_t);
                    im2col(&d.g, xb, &mut cols);
                    matmul(
                        MatMut::col_major(&mut dw_t, o, rows),
                        Mat::row_major(&dz_t, hw, o).t(),
                        Mat::row_major(&cols, rows, hw).t(),
                        true,
                        gt,
                    );
                    if let Some(dxc) = dxc.as_deref_mut() {
                        matmul(
                            MatMut::row_major(&mut dcols, rows, hw),
                            Mat::row_major(w, o, rows).t(),
                            Mat::row_major(dz, o, hw),
                            false,
                            gt,
                        );
                        col2im(&d.g, &dcols, &mut dxc[i * xl..(i + 1) * xl]);
                    }
                }
                let mut dw = vec![0f32; o * rows];
                transpose(&dw_t, rows, o, &mut dw);
                (dw, dbias)
            })
            .collect();
        let mut dw = vec![0f32; o * rows];
        let mut dbias = vec![0f64; o];
        for (pw, pb) in &parts {
            for (a, b) in dw.iter_mut().zip(pw) {
                *a += b;
            }
            for (a, b) in dbias.iter_mut().zip(pb) {
                *a += b;
            }
        }
        let mut dp: Vec<f32> = dbias.iter().map(|&v| v as f32).collect();
        if s.batch_norm {
            dp.extend(dgamma.iter().map(|&v| v as f32));
            dp.extend(dbeta.iter().map(|&v| v as f32));
        }
        (s.input_grad.then_some(dx), dw, dp)
    }
}

/// One image: `relu(z * scale + shift)` per channel, max-pooled when `argmax` is given
/// (which then records each window's maximum).
fn activate(
    zb: &[f32],
    scale: &[f32],
    shift: &[f32],
    d: &Dims,
    ob: &mut [f32],
    mut argmax: Option<&mut [u8]>,
) {
    let (hw, plane) = (d.hw(), d.hp * d.wp);
    for ci in 0..d.o {
        let zr = &zb[ci * hw..(ci + 1) * hw];
        let orow = &mut ob[ci * plane..(ci + 1) * plane];
        let (a, sh) = (scale[ci], shift[ci]);
        match argmax.as_deref_mut() {
            None => {
                for (y, &v) in orow.iter_mut().zip(zr) {
                    *y = (v * a + sh).max(0.0);
                }
            }
            Some(am) => pool_row(zr, a, sh, d, orow, &mut am[ci * plane..(ci + 1) * plane]),
        }
    }
}

/// One image's convolution without bias: im2col into `cols`, then `z = W x cols`.
fn conv_image(
    g: &ConvGeom,
    o: usize,
    w: &[f32],
    x: &[f32],
    cols: &mut [f32],
    z: &mut [f32],
    threads: usize,
) {
    let (rows, hw) = (g.rows(), g.cols());
    im2col(g, x, cols);
    matmul(
        MatMut::row_major(z, o, hw),
        Mat::row_major(w, o, rows),
        Mat::row_major(cols, rows, hw),
        false,
        threads,
    );
}

/// Max-pool one channel of pre-activations `zr` after the affine map `v * a + sh` and the
/// ReLU, recording each window's argmax (the first maximum, as PyTorch).
fn pool_row(zr: &[f32], a: f32, sh: f32, d: &Dims, out: &mut [f32], arg: &mut [u8]) {
    let (k, wo) = (d.pool, d.g.wo);
    for py in 0..d.hp {
        for px in 0..d.wp {
            let mut best = f32::NEG_INFINITY;
            let mut at = 0u8;
            for dy in 0..k {
                let row = &zr[(py * k + dy) * wo + px * k..][..k];
                for (dx, &v) in row.iter().enumerate() {
                    let v = v * a + sh;
                    if v > best {
                        best = v;
                        at = (dy * k + dx) as u8;
                    }
                }
            }
            out[py * d.wp + px] = best.max(0.0);
            arg[py * d.wp + px] = at;
        }
    }
}

thread_local! {
    /// Per-thread spare buffers: the column matrices and gradients of every call would
    /// otherwise be fresh allocations (page faults and zeroing on every step).
    static SPARE: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer of `len` floats with unspecified (but initialised) contents, from this
/// thread's spares; it goes back on drop. Taking rather than borrowing keeps it sound if
/// a nested parallel call runs another chunk on this thread.
struct Scratch(Vec<f32>);

impl Scratch {
    fn new(len: usize) -> Self {
        let mut v = SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default();
        v.resize(len, 0.0);
        Scratch(v)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < 4 {
                s.push(v);
            }
        });
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

/// Images per work chunk and gemm's own thread count: one chunk per thread, fixed for a
/// thread count (so reductions run in a fixed order); with fewer images than threads
/// (batch 1 latency), gemm splits each product instead.
fn chunking(b: usize) -> (usize, usize) {
    let nt = rayon::current_num_threads().max(1);
    let chunks = nt.min(b).max(1);
    (b.div_ceil(chunks), if b < nt { nt } else { 1 })
}

/// `Some(chunk)` per work chunk when `on`, else `None` for each: lets an optional output
/// ride along a parallel zip.
fn optional_chunks<T: Send>(v: &mut [T], on: bool, size: usize, n: usize) -> Vec<Option<&mut [T]>> {
    if on {
        v.chunks_mut(size).map(Some).collect()
    } else {
        (0..n).map(|_| None).collect()
    }
}

/// Element-wise sum of per-chunk vectors, in chunk order.
fn reduce(parts: &[Vec<f64>], n: usize) -> Vec<f64> {
    let mut out = vec![0f64; n];
    for p in parts {
        for (a, b) in out.iter_mut().zip(p) {
            *a += b;
        }
    }
    out
}

// Sums with 16 independent accumulators, which the compiler vectorises (a plain
// iterator sum is a serial dependency chain).
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut it = v.chunks_exact(16);
    for c in &mut it {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
}

fn sum_sq_dev(v: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut it = v.chunks_exact(16);
    for c in &mut it {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += (x - m) * (x - m);
        }
    }
    acc.iter().sum::<f32>()
        + it.remainder()
            .iter()
            .map(|x| (x - m) * (x - m))
            .sum::<f32>()
}

/// `sum(g * (z - m))`.
fn dot_dev(g: &[f32], z: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut gi = g.chunks_exact(16);
    let mut zi = z.chunks_exact(16);
    for (gc, zc) in (&mut gi).zip(&mut zi) {
        for ((a, x), y) in acc.iter_mut().zip(gc).zip(zc) {
            *a += x * (y - m);
        }
    }
    let tail: f32 = gi
        .remainder()
        .iter()
        .zip(zi.remainder())
        .map(|(x, y)| x * (y - m))
        .sum();
    acc.iter().sum::<f32>() + tail
}

fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("conv block: {what} must be f32")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("conv block: {what} must be contiguous")
    };
    Ok(&v[a..b])
}

fn tensor_f32<'a>(s: &'a Storage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(c) => cpu_f32(c, l, what),
        _ => bail!("conv block: {what} must be on the CPU (the fused block is a CPU kernel)"),
    }
}

impl CustomOp3 for BlockOp {
    fn name(&self) -> &'static str {
        "edgecp-conv-block"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let blk = &self.0;
        let d = blk.dims(l1.dims(), l2.dims(), l3.dims())?;
        let x = cpu_f32(s1, l1, "input")?;
        let w = cpu_f32(s2, l2, "weights")?;
        let p = cpu_f32(s3, l3, "parameters")?;
        let out = blk.forward(x, w, p, &d);
        Ok((CpuStorage::F32(out), Shape::from((d.b, d.o, d.hp, d.wp))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        p: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let blk = &self.0;
        let d = blk.dims(x.dims(), w.dims(), p.dims())?;
        let guard = match blk.saved.lock() {
            Ok(g) => g,
            Err(_) => bail!("conv block: saved state poisoned by an earlier panic"),
        };
        let Some(sv) = guard.as_ref() else {
            bail!("conv block: backward without a training-mode forward pass")
        };
        let (x, w, p) = (x.contiguous()?, w.contiguous()?, p.contiguous()?);
        let (res, grad) = (res.contiguous()?, grad.contiguous()?);
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (ps, pl) = p.storage_and_layout();
        let (rs, rl) = res.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (dx, dw, dp) = blk.backward(
            tensor_f32(&xs, xl, "input")?,
            tensor_f32(&ws, wl, "weights")?,
            tensor_f32(&ps, pl, "parameters")?,
            tensor_f32(&rs, rl, "output")?,
            tensor_f32(&gs, gl, "output gradient")?,
            &d,
            sv,
        );
        let dev = x.device();
        let dx = match dx {
            Some(v) => Some(Tensor::from_vec(v, x.shape(), dev)?),
            None => None,
        };
        Ok((
            dx,
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(dp, p.shape(), dev)?),
        ))
    }
}
