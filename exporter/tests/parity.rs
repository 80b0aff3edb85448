//! The exported files compute the trained network: the agent's native engine (`infer`),
//! tract-onnx, tract-tflite, onnxruntime (after `onnx.checker`) and the LiteRT
//! interpreter, each within 1e-4 of the candle
//! forward pass on 64 real GTSRB images, for both architectures (batch norm + L2, and the
//! reference net without either).

mod common;

use exporter::net::{raw_input, reference_embeddings, FoldedNet};
use exporter::runtime::{max_abs_diff, Format, TractModel};

const N: usize = 64;
const TOL: f32 = 1e-4;

#[test]
fn exported_models_match_candle_on_64_gtsrb_images() {
    let images = common::gtsrb_images(N);
    for (bn, l2, dim, seed) in [(true, true, 128, 1), (false, false, 64, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let net = common::random_network(dir.path(), bn, l2, dim, seed);
        let want = reference_embeddings(&net, &images).unwrap();
        let folded = FoldedNet::from_backbone(&net).unwrap();
        let onnx = exporter::onnx::to_onnx_bytes(&folded, &[]);
        let tflite = exporter::tflite::to_tflite_bytes(&folded, "test");
        let idx: Vec<usize> = (0..N).collect();
        let x = raw_input(&images, &idx);

        for (format, bytes) in [(Format::Onnx, &onnx), (Format::Tflite, &tflite)] {
            for batch in [N, 1] {
                let m = TractModel::load(format, bytes, batch, 32)
                    .unwrap_or_else(|e| panic!("{} batch {batch}: {e:?}", format.name()));
                let got = m.run_all(&x).unwrap();
                let d = max_abs_diff(&got, &want);
                eprintln!(
                    "bn {bn} l2 {l2}: tract {} batch {batch}: max |diff| {d:e}",
                    format.name()
                );
                assert!(d <= TOL, "tract {} batch {batch}: {d:e}", format.name());
            }
        }

        // the agent's native engine on the ONNX bytes, whole batch and one image at a time
        // (its two parallel modes)
        let native =
            infer::Engine::from_onnx(&onnx, "model.onnx", infer::Options::default()).unwrap();
        let per = 32 * 32 * 3;
        let one_by_one: Vec<f32> = x
            .chunks(per)
            .flat_map(|xi| native.embed(xi).unwrap())
            .collect();
        for (mode, got) in [("batch", native.embed(&x).unwrap()), ("single", one_by_one)] {
            let d = max_abs_diff(&got, &want);
            eprintln!("bn {bn} l2 {l2}: native {mode}: max |diff| {d:e}");
            assert!(d <= TOL, "native {mode}: {d:e}");
        }

        let ex = dir.path().join("exchange");
        std::fs::create_dir_all(&ex).unwrap();
        std::fs::write(ex.join("model.onnx"), &onnx).unwrap();
        std::fs::write(ex.join("model.tflite"), &tflite).unwrap();
        // int8: calibrated on these images (the test checks the file runs and stays close)
        let ranges = exporter::quantize::calibrate(&onnx, &folded, &x, 16).unwrap();
        let int8 = exporter::quantize::to_tflite_int8_bytes(&folded, &ranges, "test");
        assert!(
            int8.len() * 3 < tflite.len(),
            "int8 {} vs float {}",
            int8.len(),
            tflite.len()
        );
        std::fs::write(ex.join("model_int8.tflite"), &int8).unwrap();
        common::write_f32(&ex.join("input.f32"), &x);
        common::write_f32(&ex.join("expected.f32"), &want);
        std::fs::write(
            ex.join("shape.json"),
            format!(r#"{{"n": {N}, "side": 32, "dim": {dim}}}"#),
        )
        .unwrap();
        let r = common::run_python("check_exported.py", &ex);
        eprintln!("bn {bn} l2 {l2}: python {r}");
        assert_eq!(r["onnx_checker"], "ok");
        assert_eq!(r["onnx_opset"], 13);
        for k in [
            "onnxruntime_batch_n",
            "onnxruntime_batch_1",
            "litert_batch_n",
        ] {
            let d = r[k].as_f64().unwrap_or(f64::INFINITY);
            assert!(d <= f64::from(TOL), "{k}: {d:e}");
        }
        let cos = r["litert_int8_min_cosine"].as_f64().unwrap_or(0.0);
        assert!(
            cos > 0.95,
            "int8 embeddings drift from float32: min cosine {cos}"
        );
        let ops: Vec<&str> = r["litert_ops"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for op in ["CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "RESHAPE"] {
            assert!(ops.contains(&op), "LiteRT ops {ops:?} lack {op}");
        }
        for op in ["BATCH_MATMUL", "MAXIMUM"] {
            assert!(!ops.contains(&op), "LiteRT ops {ops:?} contain {op}");
        }
    }
}
