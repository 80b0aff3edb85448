//! Bundles end to end (build, sign, verify with tract parity) and bad input: every failure
//! names the file and the problem.

mod common;

use std::path::Path;

use exporter::golden::{self, Golden};
use exporter::source::open_run;
use safetensors::tensor::TensorView;
use shared::bundle::{self, keys, BundleError};

/// A run folder: random weights and a small reference file.
fn run_folder(dir: &Path) {
    common::random_network(dir, true, true, 32, 5);
    let scores: Vec<u8> = (0..50)
        .flat_map(|i| (i as f64 / 50.0).to_le_bytes())
        .collect();
    let centroids: Vec<u8> = (0..43 * 32)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    let views = vec![
        (
            "calibration_scores.nearest_centroid",
            TensorView::new(safetensors::Dtype::F64, vec![50], &scores).unwrap(),
        ),
        (
            "centroids",
            TensorView::new(safetensors::Dtype::F32, vec![43, 32], &centroids).unwrap(),
        ),
    ];
    std::fs::write(
        dir.join("reference.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
}

fn built_bundle(root: &Path) -> (std::path::PathBuf, ed25519_dalek::SigningKey) {
    let run = root.join("run");
    run_folder(&run);
    let src = open_run(run.to_str().unwrap(), "sqlite::memory:").unwrap();
    let golden = golden::synthetic(&src.net).unwrap();
    let key = keys::generate().unwrap();
    let out = root.join("bundle");
    let names = shared::data::gtsrb_class_names();
    exporter::bundle::build(&src, &golden, &key, &out, names).unwrap();
    (out, key)
}

#[test]
fn a_bundle_verifies_and_rejects_every_change() {
    let root = tempfile::tempdir().unwrap();
    let (dir, key) = built_bundle(root.path());
    let public = key.verifying_key();
    let (b, parity) = exporter::bundle::verify_full(&dir, &public).unwrap();
    assert_eq!(parity.len(), 2);
    for p in &parity {
        assert!(p.max_abs_diff <= 1e-4, "{p:?}");
    }
    assert_eq!(b.manifest.icp.n_calibration, 50);
    assert_eq!(b.manifest.models[0].opset, Some(13));

    // Every file: single-byte changes at 64 positions spread over it (all positions for the
    // manifest and the signature), plus truncation; bundle::verify hashes every byte.
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 6);
    for path in &files {
        let original = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let positions: Vec<usize> = if name.starts_with("manifest") {
            (0..original.len()).collect()
        } else {
            (0..64).map(|i| i * (original.len() - 1) / 63).collect()
        };
        for i in positions {
            let mut changed = original.clone();
            changed[i] ^= 0x01;
            std::fs::write(path, &changed).unwrap();
            let err = bundle::verify(&dir, &public);
            assert!(err.is_err(), "{name} byte {i} changed and accepted");
        }
        std::fs::write(path, &original[..original.len() / 2]).unwrap();
        let err = bundle::verify(&dir, &public).unwrap_err().to_string();
        assert!(err.contains(&name), "{err}");
        std::fs::write(path, &original).unwrap();
    }
    bundle::verify(&dir, &public).unwrap();

    let other = keys::generate().unwrap();
    let err = bundle::verify(&dir, &other.verifying_key()).unwrap_err();
    assert!(matches!(err, BundleError::BadSignature { .. }), "{err}");
}

#[test]
fn a_model_that_no_longer_matches_its_golden_outputs_fails_verification() {
    // Re-signed after the change: only the parity step can catch it.
    let root = tempfile::tempdir().unwrap();
    let (dir, key) = built_bundle(root.path());
    let gpath = dir.join("golden.safetensors");
    let mut g = Golden::parse(&std::fs::read(&gpath).unwrap(), "golden").unwrap();
    g.expected[3] += 0.01;
    std::fs::write(&gpath, g.to_safetensors().unwrap()).unwrap();
    let mut m = bundle::read_unverified(&dir).unwrap();
    for f in &mut m.files {
        *f = bundle::file_entry(&dir, &f.name, &f.role).unwrap();
    }
    bundle::write_signed(&dir, &m, &key).unwrap();
    bundle::verify(&dir, &key.verifying_key()).unwrap();
    let err = format!(
        "{:#}",
        exporter::bundle::verify_full(&dir, &key.verifying_key()).unwrap_err()
    );
    assert!(
        err.contains("model.onnx") && err.contains("differs from the golden outputs"),
        "{err}"
    );
}

#[test]
fn bad_input_is_named_with_its_problem() {
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("run");
    run_folder(&run);
    let weights = run.join("model.safetensors");
    let good = std::fs::read(&weights).unwrap();

    // a run folder without weights
    let empty = root.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = format!(
        "{:#}",
        open_run(empty.to_str().unwrap(), "sqlite::memory:").unwrap_err()
    );
    assert!(
        err.contains("has no weights") && err.contains("model.safetensors"),
        "{err}"
    );

    // truncated weights
    std::fs::write(&weights, &good[..good.len() - 100]).unwrap();
    let err = format!(
        "{:#}",
        open_run(run.to_str().unwrap(), "sqlite::memory:").unwrap_err()
    );
    assert!(
        err.contains("model.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );

    // weights of another shape: the arch says E = 64, the tensors are E = 32
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(good[8..8 + n].to_vec()).unwrap();
    let changed = header.replacen("\\\"embedding_dim\\\":32", "\\\"embedding_dim\\\":64", 1);
    assert_ne!(changed, header, "arch metadata not found in the header");
    let header = changed;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&good[8 + n..]);
    std::fs::write(&weights, &bytes).unwrap();
    let err = format!(
        "{:#}",
        open_run(run.to_str().unwrap(), "sqlite::memory:").unwrap_err()
    );
    assert!(
        err.contains("model.safetensors") && err.contains("dense.weight") && err.contains("shape"),
        "{err}"
    );
    std::fs::write(&weights, &good).unwrap();

    // ONNX: truncated, and an unknown opset
    let src = open_run(run.to_str().unwrap(), "sqlite::memory:").unwrap();
    let folded = exporter::net::FoldedNet::from_backbone(&src.net).unwrap();
    let onnx = exporter::onnx::to_onnx_bytes(&folded, &[]);
    exporter::onnx::check_onnx(&onnx, "model.onnx").unwrap();
    let err = exporter::onnx::check_onnx(&onnx[..onnx.len() / 2], "b/model.onnx")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("b/model.onnx") && err.contains("not a valid ONNX"),
        "{err}"
    );
    let mut proto = exporter::onnx::model_proto(&folded, &[]);
    proto.opset_import[0].version = 99;
    let err = exporter::onnx::check_onnx(&prost::Message::encode_to_vec(&proto), "b/model.onnx")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("b/model.onnx") && err.contains("opset 99"),
        "{err}"
    );

    // TFLite: truncated
    let tfl = exporter::tflite::to_tflite_bytes(&folded, "t");
    exporter::tflite::check_tflite(&tfl, "m.tflite").unwrap();
    let err = exporter::tflite::check_tflite(&tfl[..tfl.len() / 3], "b/m.tflite")
        .unwrap_err()
        .to_string();
    assert!(err.contains("b/m.tflite"), "{err}");
}
