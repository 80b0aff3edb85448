//! Times `Engine::embed` on a model file alone (no ICP, no decoding): the figure to
//! profile the engine with (`valgrind --tool=callgrind`, `perf record`).
//!
//! ```sh
//! cargo run --release -p infer --example embed_bench -- BUNDLE/model.onnx [batch] [iters] [threads] [split_work]
//! ```
//!
//! Prints p50 / p10 / p90 latency per call (us) and images per second.

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        return Err("usage: embed_bench MODEL.onnx [batch] [iters] [threads] [split_work]".into());
    };
    let num = |i: usize, d: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(match args.get(i) {
            Some(s) => s.parse()?,
            None => d,
        })
    };
    let (batch, iters, threads) = (num(2, 1)?, num(3, 500)?, num(4, 0)?);
    let bytes = std::fs::read(path)?;
    let split_work = match args.get(5) {
        Some(s) => Some(s.parse()?),
        None => None,
    };
    let engine = infer::Engine::from_onnx(&bytes, path, infer::Options { threads })?
        .with_split_work(split_work);
    let (h, w, c) = engine.input_dims();
    // deterministic pixel values in 0..255
    let x: Vec<f32> = (0..batch * h * w * c)
        .map(|i| ((i * 2_654_435_761) % 256) as f32)
        .collect();
    for _ in 0..10 {
        std::hint::black_box(engine.embed(&x)?);
    }
    let mut lat = Vec::with_capacity(iters);
    let t0 = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        std::hint::black_box(engine.embed(&x)?);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = t0.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    println!(
        "batch {batch} threads {} split_work {} iters {iters}: p50 {:.1} us, p10 {:.1}, p90 {:.1}; {:.0} images/s",
        engine.threads(),
        engine.split_work(),
        q(0.5),
        q(0.1),
        q(0.9),
        (batch * iters) as f64 / total
    );
    Ok(())
}
