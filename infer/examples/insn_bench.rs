//! Embeds `n` images, one per call, with the native engine or tract on a model file:
//! the program to count guest instructions per image under qemu (a counting plugin,
//! `cross/insn_count.c`), where wall time means little. Counts of two runs with different
//! `n` differ by `n` images' work alone (loading and tract's optimisation cancel out).
//!
//! ```sh
//! cargo run --release -p infer --example insn_bench -- MODEL.onnx native|tract N
//! ```
//!
//! The native engine runs on one thread (`threads = 1`), tract as it does by default
//! (one thread); `EDGECP_INFER_ISA` picks the native kernels.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: insn_bench MODEL.onnx native|tract N";
    let (Some(path), Some(which), Some(n)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err(usage.into());
    };
    let n: usize = n.parse()?;
    let bytes = std::fs::read(path)?;
    let engine = infer::Engine::from_onnx(&bytes, path, infer::Options { threads: 1 })?;
    let (h, w, c) = engine.input_dims();
    let per = h * w * c;
    // deterministic pixel values in 0..255, a different image each call
    let image = |i: usize| -> Vec<f32> {
        (0..per)
            .map(|j| (((i * per + j) * 2_654_435_761) % 256) as f32)
            .collect()
    };
    let mut check = 0.0f32;
    match which.as_str() {
        "native" => {
            for i in 0..n {
                let y = engine.embed(&image(i))?;
                check += y[0];
            }
        }
        "tract" => {
            use tract_onnx::prelude::*;
            let plan = tract_onnx::onnx()
                .model_for_read(&mut &bytes[..])?
                .with_input_fact(0, f32::fact([1, h, w, c]).into())?
                .into_optimized()?
                .into_runnable()?;
            for i in 0..n {
                let t = Tensor::from_shape(&[1, h, w, c], &image(i))?;
                let y = plan.run(tvec!(t.into()))?;
                let v = y[0]
                    .try_as_plain_ram()
                    .and_then(|v| v.as_slice::<f32>().map(|s| s[0]))?;
                check += v;
            }
        }
        _ => return Err(usage.into()),
    }
    println!(
        "{which} isa {} images {n} checksum {check:.6}",
        infer::kernels::isa::isa().name()
    );
    Ok(())
}
