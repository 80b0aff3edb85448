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
//! thread runs whole images, so every activation stays in its cache). The images left over
//! (a batch of 1) run on the calling thread, with no hand-off to the pool: each layer
//! with enough work ([`Engine::with_split_work`]) is cut into units that the caller and
//! helper threads claim from a shared counter ([`team`]), so a helper that is slow to wake
//! costs nothing: the caller does its share. Smaller layers stay on the caller.
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
mod team;

use std::cell::RefCell;
use std::sync::Mutex;

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
    /// Worker threads; 0 = `$EDGECP_INFER_THREADS`, else `$RAYON_NUM_THREADS`, else the
    /// CPUs this process may use.
    pub threads: usize,
}

/// Default of [`Engine::with_split_work`]: 256k multiply-adds, about 5 us of one core at
/// this engine's speed. Splitting a layer costs the caller one helper job per helper
/// thread (posting it, and a futex wake when the helper sleeps: a few microseconds) but
/// never a wait for a wake-up ([`team`]), so the threshold only has to keep that cost
/// small against the work: at 256k it is at most a few percent. The exporter's network
/// at batch 1 has layers of 0.5M (dense) to 4.7M (conv2, F(4x4)) multiply-adds, all
/// split. Measured on the 2-core EPYC: 318 us on one thread, 215-229 us split when
/// the second core was free, 319 us split when other jobs held both cores (the old
/// fork-join per layer lost time there instead: 395-435 us against 378-400 us alone).
pub const DEFAULT_SPLIT_WORK: u64 = 1 << 18;

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// A loaded model, ready to embed batches from any number of threads.
pub struct Engine {
    plan: Plan,
    pool: rayon::ThreadPool,
    threads: usize,
    split_work: u64,
    /// Scratch of the images that run on their caller's thread: at most `threads` of them
    /// at once (more concurrent callers queue in the pool, as whole images), so the
    /// engine's memory does not grow with the number of threads that call it.
    slots: Mutex<Vec<Slot>>,
}

/// The buffers of one image run on its caller's thread.
#[derive(Default)]
struct Slot {
    image: Scratch,
    /// The caller's buffers for the units it runs of a split layer (helpers use theirs).
    band: Mutex<Scratch>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("input", &self.plan.input)
            .field("embedding_dim", &self.plan.dense.outputs)
            .field("threads", &self.threads)
            .field("split_work", &self.split_work)
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
            0 => env_number("EDGECP_INFER_THREADS")
                .or_else(|| env_number("RAYON_NUM_THREADS"))
                .filter(|&n| n > 0)
                .map_or_else(
                    || std::thread::available_parallelism().map_or(1, |n| n.get()),
                    |n| n.min(1024) as usize,
                ),
            n => n,
        };
        let split_work = env_number("EDGECP_INFER_SPLIT_WORK").unwrap_or(DEFAULT_SPLIT_WORK);
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
            split_work,
            slots: Mutex::new((0..threads).map(|_| Slot::default()).collect()),
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

    /// Multiply-adds per image from which a layer of a batch smaller than the thread
    /// count is spread over the threads ([`Engine::with_split_work`]).
    pub fn split_work(&self) -> u64 {
        self.split_work
    }

    /// Sets the multiply-adds per image from which a layer of a batch smaller than the
    /// thread count is spread over the threads; smaller layers run on the calling thread
    /// alone. `None` = `$EDGECP_INFER_SPLIT_WORK`, else [`DEFAULT_SPLIT_WORK`] (what a new
    /// engine has); `Some(0)` splits every layer, `Some(u64::MAX)` none.
    pub fn with_split_work(mut self, split_work: Option<u64>) -> Engine {
        self.split_work = split_work
            .or_else(|| env_number("EDGECP_INFER_SPLIT_WORK"))
            .unwrap_or(DEFAULT_SPLIT_WORK);
        self
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
        // whole rounds of images go one per thread; the rest run here, layers split
        let by_image = if self.threads > 1 {
            (n / self.threads) * self.threads
        } else {
            0
        };
        let (whole, rest) = feats.split_at_mut(by_image * f);
        if by_image > 0 {
            self.pool.install(|| {
                whole
                    .par_chunks_mut(f)
                    .zip(input[..by_image * per].par_chunks(per))
                    .for_each(|(out, x)| with_scratch(&IMAGE, |s| self.features(x, out, s, None)));
            });
        }
        if !rest.is_empty() {
            let x = &input[by_image * per..];
            let slot = self.slots.lock().ok().and_then(|mut v| v.pop());
            match slot {
                Some(mut slot) => {
                    for (out, xi) in rest.chunks_mut(f).zip(x.chunks(per)) {
                        let Slot { image, band } = &mut slot;
                        self.features(xi, out, image, Some(band));
                    }
                    if let Ok(mut v) = self.slots.lock() {
                        v.push(slot);
                    }
                }
                // as many callers as threads are running images already: queue in the
                // pool, whole images
                None => self.pool.install(|| {
                    for (out, xi) in rest.chunks_mut(f).zip(x.chunks(per)) {
                        with_scratch(&IMAGE, |s| self.features(xi, out, s, None));
                    }
                }),
            }
        }
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

    /// Whether a layer of `work` multiply-adds is spread over the threads (small batches).
    fn split(&self, work: u64) -> bool {
        self.threads > 1 && work >= self.split_work
    }

    /// The features (input of the dense layer, NHWC order) of one image. `band`: the
    /// caller's scratch for its units of split layers; `None` runs every layer in this
    /// thread (image-parallel mode).
    fn features(&self, x: &[f32], out: &mut [f32], s: &mut Scratch, band: Option<&Mutex<Scratch>>) {
        if s.a.len() < x.len() {
            s.a.resize(x.len(), 0.0);
        }
        s.a[..x.len()].copy_from_slice(x);
        for &(scale, offset) in &self.plan.affine {
            for v in s.a[..x.len()].iter_mut() {
                *v = *v * scale + offset;
            }
        }
        // ping-pong between two buffers taken out of the scratch (the block borrows the rest)
        // (sized once to the largest activation: no zero-filling per layer)
        let (mut a, mut b) = (std::mem::take(&mut s.a), std::mem::take(&mut s.b));
        let mut a_len = x.len();
        for block in &self.plan.convs {
            let (oh, ow, oc) = block.out_dims();
            let b_len = oh * ow * oc;
            if b.len() < b_len {
                b.resize(b_len, 0.0);
            }
            let (x, y) = (&a[..a_len], &mut b[..b_len]);
            match band {
                Some(band) if self.split(block_work(block)) => {
                    self.block_split(block, x, y, band, &mut s.pre_pool)
                }
                _ => run_block(block, x, y, s),
            }
            std::mem::swap(&mut a, &mut b);
            a_len = b_len;
        }
        out.copy_from_slice(&a[..out.len()]);
        (s.a, s.b) = (a, b);
    }

    /// One block on one image, its rows cut into units that the calling thread and the
    /// pool's threads claim ([`team::run`]). `band`: the caller's scratch for its units;
    /// `pre_pool`: the convolution's output when the pool is a separate pass.
    fn block_split(
        &self,
        block: &ConvBlock,
        x: &[f32],
        out: &mut [f32],
        band: &Mutex<Scratch>,
        pre_pool: &mut Vec<f32>,
    ) {
        let units = block_units(block);
        // two pieces per thread: a helper that starts late still finds work
        let per = units.div_ceil(2 * self.threads).max(1);
        let pieces = units.div_ceil(per);
        let unit_out = block_unit_out(block);
        let separate_pool = block.pool.is_some() && !block.pool_fused();
        let target: &mut [f32] = if separate_pool {
            winograd::grow(pre_pool, units * unit_out);
            &mut pre_pool[..units * unit_out]
        } else {
            out
        };
        let len = target.len();
        let base = SendPtr(target.as_mut_ptr());
        team::run(&self.pool, self.threads - 1, pieces, &|i, helper| {
            let (u0, u1) = (i * per, ((i + 1) * per).min(units));
            let (o0, o1) = (u0 * unit_out, (u1 * unit_out).min(len));
            // SAFETY: pieces cover disjoint ranges o0..o1 of `target`, which outlives
            // `team::run`, and each piece runs once.
            let o = unsafe { std::slice::from_raw_parts_mut(base.get().add(o0), o1 - o0) };
            if helper {
                with_scratch(&BAND, |s| block_rows(block, x, u0, u1, s, o));
            } else if let Ok(mut s) = band.lock() {
                block_rows(block, x, u0, u1, &mut s, o);
            } else {
                block_rows(block, x, u0, u1, &mut Scratch::default(), o);
            }
        });
        if let (true, Some(p)) = (separate_pool, block.pool) {
            let sh = block.shape;
            max_pool(
                p,
                &pre_pool[..units * unit_out],
                sh.out_h(),
                sh.out_w(),
                sh.out_c,
                out,
            );
        }
    }

    /// `feats · W + b` for `n` rows, split over the threads by rows (large batches) or by
    /// output columns (small ones, where reading the weights dominates).
    fn dense(&self, feats: &[f32], n: usize) -> Vec<f32> {
        let d = &self.plan.dense;
        let (f, e) = (d.features, d.outputs);
        let mut y = vec![0.0f32; n * e];
        let t = self.threads;
        if t > 1 && n >= 2 * t {
            let per = n.div_ceil(t);
            self.pool.install(|| {
                y.par_chunks_mut(per * e)
                    .zip(feats.par_chunks(per * f))
                    .for_each(|(yo, xi)| {
                        let m = xi.len() / f;
                        matmul(m, e, f, xi, f, &d.w, e, yo, e);
                    });
            });
        } else if self.split((n * f * e) as u64) && e >= 2 {
            // column pieces of whole vector registers where possible, two per thread
            let per = e.div_ceil(2 * t).next_multiple_of(16).min(e);
            let pieces = e.div_ceil(per);
            // piece-major parts: piece j is n x (its columns), contiguous
            let mut parts = vec![0.0f32; n * e];
            let base = SendPtr(parts.as_mut_ptr());
            team::run(&self.pool, t - 1, pieces, &|j, _| {
                let (e0, e1) = (j * per, ((j + 1) * per).min(e));
                // SAFETY: piece j owns parts[n * e0..n * e1], disjoint from the others;
                // `parts` outlives `team::run`.
                let part = unsafe {
                    std::slice::from_raw_parts_mut(base.get().add(n * e0), n * (e1 - e0))
                };
                matmul(n, e1 - e0, f, feats, f, &d.w[e0..], e, part, e1 - e0);
            });
            for j in 0..pieces {
                let (e0, e1) = (j * per, ((j + 1) * per).min(e));
                let part = &parts[n * e0..n * e1];
                for (row, src) in y.chunks_mut(e).zip(part.chunks(e1 - e0)) {
                    row[e0..e1].copy_from_slice(src);
                }
            }
        } else {
            matmul(n, e, f, feats, f, &d.w, e, &mut y, e);
        }
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

/// A raw pointer that disjoint pieces of one buffer are carved from on several threads.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

// SAFETY: every use carves disjoint ranges (see the call sites).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Multiply-adds of one block on one image, as computed (Winograd: the transformed
/// products, not the direct convolution's).
fn block_work(block: &ConvBlock) -> u64 {
    let s = &block.shape;
    let macs = match block.winograd_shape() {
        Some(ws) => ws.tile_rows() * ws.tile_cols() * ws.tile.points() * ws.c * ws.o,
        None => s.out_h() * s.out_w() * s.patch() * s.out_c,
    };
    macs as u64
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
            let len = units * block_unit_out(block);
            winograd::grow(&mut pre, len);
            block_rows(block, x, 0, units, s, &mut pre[..len]);
            let sh = block.shape;
            max_pool(p, &pre[..len], sh.out_h(), sh.out_w(), sh.out_c, out);
            s.pre_pool = pre;
        }
        _ => block_rows(block, x, 0, units, s, out),
    }
}
