//! `infer`: the edge agent's CPU inference engine for the exported embedding network.
//!
//! It reads the ONNX file of a bundle (the bytes the signature covers: what runs is what
//! was signed), lowers its chain of operators to a [`plan`] and runs it with kernels
//! written for this network: NHWC activations, convolutions as Winograd F(2x2, 3x3)
//! ([`kernels::winograd`]) where the kernel is 3x3 and as im2col + matrix product
//! elsewhere, bias, ReLU and max-pool fused into each block, and one matrix product for
//! the dense layer of the whole batch. Graphs it does not understand are refused with the
//! node that does not fit; a general runtime (tract, onnxruntime) runs those.
//!
//! Parallelism: a batch of at least as many images as threads is split by image (each
//! thread runs whole images, so every activation stays in its cache); smaller batches
//! split each layer's output rows across the threads instead.
//!
//! ```no_run
//! let bytes = std::fs::read("model.onnx").unwrap();
//! let engine = infer::Engine::from_onnx(&bytes, "model.onnx", infer::Options::default()).unwrap();
//! let (h, w, c) = engine.input_dims();
//! let embeddings = engine.embed(&vec![0.0; 2 * h * w * c]).unwrap(); // 2 images
//! assert_eq!(embeddings.len(), 2 * engine.embedding_dim());
//! ```

pub mod kernels;
pub mod onnx;
pub mod plan;

use std::cell::RefCell;

use rayon::prelude::*;

use kernels::im2col;
use kernels::matmul::matmul;
use kernels::pool::max_pool;
use kernels::winograd::{self, Tile, WinogradScratch};
use plan::{ConvAlgo, ConvBlock, Plan};

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{file}: not a valid ONNX protobuf (truncated or corrupt?): {source}")]
    Decode {
        file: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{file}: the native engine cannot run this graph: {source}")]
    Unsupported {
        file: String,
        #[source]
        source: plan::PlanError,
    },
    #[error("input of {got} values is not a whole, non-zero number of {h}x{w}x{c} images")]
    InputSize {
        got: usize,
        h: usize,
        w: usize,
        c: usize,
    },
    #[error("cannot start the engine's {threads} threads: {what}")]
    Threads { threads: usize, what: String },
}

/// Engine settings.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Worker threads; 0 = the CPUs this process may use.
    pub threads: usize,
}

/// A loaded model, ready to embed batches from any number of threads.
pub struct Engine {
    plan: Plan,
    pool: rayon::ThreadPool,
    threads: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("input", &self.plan.input)
            .field("embedding_dim", &self.plan.dense.outputs)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

/// Per-thread buffers, kept between calls so that a request allocates nothing large.
#[derive(Default)]
struct Scratch {
    /// Ping-pong activations of one image.
    a: Vec<f32>,
    b: Vec<f32>,
    /// A convolution's output before a separate pool pass.
    pre_pool: Vec<f32>,
    cols: Vec<f32>,
    wino: WinogradScratch,
}

thread_local! {
    /// Buffers of the image a thread is running (image-parallel mode) or orchestrating.
    static IMAGE: RefCell<Scratch> = RefCell::new(Scratch::default());
    /// Buffers of one band of a layer (row-parallel mode).
    static BAND: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with the thread's scratch moved out of `key` and puts it back after. No borrow
/// is held while `f` runs: a rayon worker that waits inside `f` (row-parallel mode) may
/// run another request's job on this thread, which then finds an empty scratch and
/// allocates its own instead of hitting a borrowed RefCell.
fn with_scratch<R>(
    key: &'static std::thread::LocalKey<RefCell<Scratch>>,
    f: impl FnOnce(&mut Scratch) -> R,
) -> R {
    let mut s = key.with(RefCell::take);
    let r = f(&mut s);
    key.with(|c| c.replace(s));
    r
}

impl Engine {
    /// Decodes and lowers an ONNX model (`file` names it in errors) and starts the
    /// engine's threads.
    pub fn from_onnx(bytes: &[u8], file: &str, options: Options) -> Result<Engine, EngineError> {
        let model = onnx::Model::decode_bytes(bytes).map_err(|source| EngineError::Decode {
            file: file.to_string(),
            source,
        })?;
        let plan = plan::lower(&model).map_err(|source| EngineError::Unsupported {
            file: file.to_string(),
            source,
        })?;
        Engine::from_plan(plan, options)
    }

    fn from_plan(plan: Plan, options: Options) -> Result<Engine, EngineError> {
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("infer-{i}"))
            .build()
            .map_err(|e| EngineError::Threads {
                threads,
                what: e.to_string(),
            })?;
        Ok(Engine {
            plan,
            pool,
            threads,
        })
    }

    /// Input image `(h, w, c)`; inputs are NHWC.
    pub fn input_dims(&self) -> (usize, usize, usize) {
        self.plan.input
    }

    pub fn embedding_dim(&self) -> usize {
        self.plan.dense.outputs
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The graph's input and output names.
    pub fn io_names(&self) -> (&str, &str) {
        (&self.plan.input_name, &self.plan.output_name)
    }

    /// One line per block: how each is computed (for logs and `--help`-level summaries).
    pub fn describe(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .plan
            .convs
            .iter()
            .map(|b| {
                let s = &b.shape;
                format!(
                    "{}: {}x{} conv {}->{} on {}x{}{}{}{} ({})",
                    b.name,
                    s.kernel,
                    s.kernel,
                    s.in_c,
                    s.out_c,
                    s.in_h,
                    s.in_w,
                    if s.stride > 1 {
                        format!(" stride {}", s.stride)
                    } else {
                        String::new()
                    },
                    if b.relu { " + relu" } else { "" },
                    b.pool.map_or(String::new(), |p| format!(
                        " + maxpool {}/{}",
                        p.kernel, p.stride
                    )),
                    match b.algo {
                        ConvAlgo::Winograd { tile: Tile::F2, .. } => "winograd F(2x2,3x3)",
                        ConvAlgo::Winograd { tile: Tile::F4, .. } => "winograd F(4x4,3x3)",
                        ConvAlgo::Im2col { .. } => "im2col",
                    }
                )
            })
            .collect();
        let d = &self.plan.dense;
        v.push(format!(
            "dense {} -> {}{}{}",
            d.features,
            d.outputs,
            if d.relu { " + relu" } else { "" },
            if self.plan.l2_eps.is_some() {
                " + L2 normalisation"
            } else {
                ""
            }
        ));
        v
    }

    /// Embeddings (`n x E`, row-major) of `input`: `n` NHWC images.
    pub fn embed(&self, input: &[f32]) -> Result<Vec<f32>, EngineError> {
        let (h, w, c) = self.plan.input;
        let per = h * w * c;
        if input.is_empty() || !input.len().is_multiple_of(per) {
            return Err(EngineError::InputSize {
                got: input.len(),
                h,
                w,
                c,
            });
        }
        let n = input.len() / per;
        let f = self.plan.dense.features;
        let mut feats = vec![0.0f32; n * f];
        self.pool.install(|| {
            // whole rounds of images go one per thread; the rest split their layers
            let by_image = (n / self.threads) * self.threads;
            feats[..by_image * f]
                .par_chunks_mut(f)
                .zip(input[..by_image * per].par_chunks(per))
                .for_each(|(out, x)| with_scratch(&IMAGE, |s| self.features(x, out, s, false)));
            for (out, x) in feats[by_image * f..]
                .chunks_mut(f)
                .zip(input[by_image * per..].chunks(per))
            {
                with_scratch(&IMAGE, |s| self.features(x, out, s, true));
            }
        });
        let mut y = self.dense(&feats, n);
        if let Some(eps) = self.plan.l2_eps {
            for row in y.chunks_mut(self.plan.dense.outputs) {
                let ss: f32 = row.iter().map(|v| v * v).sum();
                let norm = (ss + eps).sqrt();
                for v in row.iter_mut() {
                    *v /= norm;
                }
            }
        }
        Ok(y)
    }

    /// The features (input of the dense layer, NHWC order) of one image. `split`: spread
    /// each layer over the pool's threads (called inside `pool.install`).
    fn features(&self, x: &[f32], out: &mut [f32], s: &mut Scratch, split: bool) {
        s.a.clear();
        s.a.extend_from_slice(x);
        for &(scale, offset) in &self.plan.affine {
            for v in s.a.iter_mut() {
                *v = *v * scale + offset;
            }
        }
        // ping-pong between two buffers taken out of the scratch (the block borrows the rest)
        let (mut a, mut b) = (std::mem::take(&mut s.a), std::mem::take(&mut s.b));
        for block in &self.plan.convs {
            let (oh, ow, oc) = block.out_dims();
            b.resize(oh * ow * oc, 0.0);
            if split {
                self.block_split(block, &a, &mut b);
            } else {
                run_block(block, &a, &mut b, s);
            }
            std::mem::swap(&mut a, &mut b);
        }
        out.copy_from_slice(&a[..out.len()]);
        (s.a, s.b) = (a, b);
    }

    /// One block on one image with its rows spread over the pool's threads.
    fn block_split(&self, block: &ConvBlock, x: &[f32], out: &mut [f32]) {
        let units = block_units(block);
        let per = units.div_ceil(self.threads);
        let unit_out = block_unit_out(block);
        let separate_pool = block.pool.is_some() && !block.pool_fused();
        let mut conv_out = Vec::new();
        let target: &mut [f32] = if separate_pool {
            conv_out.resize(units * unit_out, 0.0);
            &mut conv_out
        } else {
            out
        };
        target
            .par_chunks_mut(per * unit_out)
            .enumerate()
            .for_each(|(i, o)| {
                let u0 = i * per;
                let u1 = (u0 + per).min(units);
                with_scratch(&BAND, |s| block_rows(block, x, u0, u1, s, o))
            });
        if let (true, Some(p)) = (separate_pool, block.pool) {
            let sh = block.shape;
            max_pool(p, &conv_out, sh.out_h(), sh.out_w(), sh.out_c, out);
        }
    }

    /// `feats · W + b` for `n` rows, split over the threads by rows (large batches) or by
    /// output columns (small ones, where the weights dominate).
    fn dense(&self, feats: &[f32], n: usize) -> Vec<f32> {
        let d = &self.plan.dense;
        let (f, e) = (d.features, d.outputs);
        let mut y = vec![0.0f32; n * e];
        let t = self.threads;
        self.pool.install(|| {
            if n >= 2 * t {
                let per = n.div_ceil(t);
                y.par_chunks_mut(per * e)
                    .zip(feats.par_chunks(per * f))
                    .for_each(|(yo, xi)| {
                        let m = xi.len() / f;
                        matmul(m, e, f, xi, f, &d.w, e, yo, e);
                    });
            } else {
                let per = e.div_ceil(t);
                let parts: Vec<(usize, Vec<f32>)> = (0..e.div_ceil(per))
                    .into_par_iter()
                    .map(|j| {
                        let (e0, e1) = (j * per, ((j + 1) * per).min(e));
                        let mut part = vec![0.0f32; n * (e1 - e0)];
                        matmul(n, e1 - e0, f, feats, f, &d.w[e0..], e, &mut part, e1 - e0);
                        (e0, part)
                    })
                    .collect();
                for (e0, part) in parts {
                    let cols = part.len() / n;
                    for (row, src) in y.chunks_mut(e).zip(part.chunks(cols)) {
                        row[e0..e0 + cols].copy_from_slice(src);
                    }
                }
            }
        });
        for row in y.chunks_mut(e) {
            for (v, b) in row.iter_mut().zip(&d.b) {
                *v += b;
                if d.relu {
                    *v = v.max(0.0);
                }
            }
        }
        y
    }
}

/// Units a block's output splits into: Winograd tile rows, or im2col output rows.
fn block_units(block: &ConvBlock) -> usize {
    match block.winograd_shape() {
        Some(ws) => ws.tile_rows(),
        None => block.shape.out_h(),
    }
}

/// Output values of one unit (after a fused pool, before a separate one).
fn block_unit_out(block: &ConvBlock) -> usize {
    match block.winograd_shape() {
        Some(ws) => ws.row_out(block.pool_fused()),
        None => block.shape.out_w() * block.shape.out_c,
    }
}

/// Units `u0..u1` of a block's output: convolution, bias, ReLU, and the pool when it is
/// fused into the Winograd output transform.
fn block_rows(
    block: &ConvBlock,
    x: &[f32],
    u0: usize,
    u1: usize,
    s: &mut Scratch,
    out: &mut [f32],
) {
    match (&block.algo, block.winograd_shape()) {
        (ConvAlgo::Winograd { u, .. }, Some(ws)) => winograd::conv_rows(
            ws,
            u,
            &block.bias,
            block.relu,
            block.pool_fused(),
            x,
            u0,
            u1,
            &mut s.wino,
            out,
        ),
        (ConvAlgo::Im2col { w }, _) => im2col::conv_rows(
            &block.shape,
            w,
            &block.bias,
            block.relu,
            x,
            u0,
            u1,
            &mut s.cols,
            out,
        ),
        (ConvAlgo::Winograd { .. }, None) => unreachable!("a Winograd block has a Winograd shape"),
    }
}

/// One block on one image in the calling thread.
fn run_block(block: &ConvBlock, x: &[f32], out: &mut [f32], s: &mut Scratch) {
    let units = block_units(block);
    match block.pool {
        Some(p) if !block.pool_fused() => {
            let mut pre = std::mem::take(&mut s.pre_pool);
            pre.resize(units * block_unit_out(block), 0.0);
            block_rows(block, x, 0, units, s, &mut pre);
            let sh = block.shape;
            max_pool(p, &pre, sh.out_h(), sh.out_w(), sh.out_c, out);
            s.pre_pool = pre;
        }
        _ => block_rows(block, x, 0, units, s, out),
    }
}
