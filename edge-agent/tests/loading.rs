//! Loading through the library: a good bundle loads with both runtimes and answers; every
//! tampered bundle is refused with an error that names what failed; the assurance output
//! follows a known sequence of answers.

mod common;

use std::path::Path;

use common::*;
use edge_agent::model::loader::{self, LoadError, LoadOptions};
use edge_agent::model::predictor::Predictor;
use edge_agent::model::runtime::Runtime;
use edge_agent::monitoring::assurance::{AlertRule, Assurance, MemoryPin};
use shared::bundle::{self, keys, BundleError};
use shared::icp::{NcmKind, PValueMode};

fn load(dir: &Path, key: &ed25519_dalek::VerifyingKey) -> Result<loader::LoadedModel, LoadError> {
    loader::load(dir, key, &LoadOptions::default())
}

#[test]
fn a_good_bundle_loads_with_every_runtime_and_answers() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _, key) = built_bundle(root.path());
    let vk = key.verifying_key();
    let m = load(&dir, &vk).unwrap();
    assert!(m.self_test.max_abs_diff <= 1e-4, "{:?}", m.self_test);
    assert_eq!(m.self_test.count, 16);
    assert_eq!(m.predictor.n_classes(), 43);
    // the default is the native engine on the ONNX file
    assert_eq!(m.engine.runtime(), Runtime::Native);
    assert_eq!(m.self_test.runtime, "native");
    assert!(m.self_test.file.ends_with("model.onnx"));
    // every engine gives the same embeddings on 37 images (tract's ONNX one over several
    // plans, the native one over both of its parallel modes)
    let x: Vec<f32> = (0..37 * 32 * 32 * 3).map(|i| (i % 256) as f32).collect();
    let a = m.engine.embed(&x).unwrap();
    assert_eq!(a.len(), 37 * 32);
    for (runtime, built) in [
        (Runtime::Tract, cfg!(feature = "tract")),
        (Runtime::Tflite, cfg!(feature = "tflite")),
    ] {
        let opts = LoadOptions {
            runtime,
            ..LoadOptions::default()
        };
        if !built {
            // a device build without it says which feature to build with
            let Err(e) = loader::load(&dir, &vk, &opts) else {
                panic!("{runtime:?} loaded in a build without it");
            };
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("--features {}", runtime.name())),
                "{msg}"
            );
            continue;
        }
        let t = loader::load(&dir, &vk, &opts).unwrap();
        assert_eq!(t.engine.runtime(), runtime);
        let file = if runtime == Runtime::Tflite {
            "model.tflite"
        } else {
            "model.onnx"
        };
        assert!(t.self_test.file.ends_with(file), "{:?}", t.self_test);
        let b = t.engine.embed(&x).unwrap();
        let d = edge_agent::model::runtime::max_abs_diff(&a, &b);
        assert!(d < 1e-4, "native vs {runtime:?}: {d}");
    }
    let (answers, _) = edge_agent::model::pipeline::answer(&m, &x, 0.05).unwrap();
    assert_eq!(answers.len(), 37);
    for a in &answers {
        assert_eq!(a.p_values.len(), 43);
        assert!(a.credibility <= 1.0 && a.confidence <= 1.0);
        assert_eq!(a.set.len(), a.labels.len());
    }
    let (_, tests) = loader::verify(&dir, &vk).unwrap();
    let ran: Vec<&str> = tests.iter().map(|t| t.runtime.as_str()).collect();
    let mut want = vec!["native"];
    if cfg!(feature = "tract") {
        want.push("tract");
    }
    if cfg!(feature = "ort") {
        want.push("ort");
    }
    if cfg!(feature = "tflite") {
        want.push("tflite");
    }
    assert_eq!(ran, want);
}

#[test]
fn every_tampered_bundle_is_refused_and_the_error_names_it() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _, key) = built_bundle(root.path());
    let vk = key.verifying_key();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names.len(), 6, "{names:?}");
    for name in &names {
        // a flipped bit at the start, the middle and the end of every file
        let original = std::fs::read(dir.join(name)).unwrap();
        for pos in [0, original.len() / 2, original.len() - 1] {
            let bad = root.path().join(format!("flip-{name}-{pos}"));
            copy_dir(&dir, &bad);
            let mut b = original.clone();
            b[pos] ^= 0x01;
            std::fs::write(bad.join(name), &b).unwrap();
            let err = load(&bad, &vk).unwrap_err();
            let msg = err.to_string();
            let named = if name.starts_with("manifest") {
                msg.contains("manifest.sig") || msg.contains("manifest.json")
            } else {
                msg.contains(name.as_str())
            };
            assert!(named, "{name} byte {pos}: {msg}");
        }
        // missing file
        let gone = root.path().join(format!("missing-{name}"));
        copy_dir(&dir, &gone);
        std::fs::remove_file(gone.join(name)).unwrap();
        let msg = load(&gone, &vk).unwrap_err().to_string();
        assert!(msg.contains(name.as_str()), "missing {name}: {msg}");
    }
    // wrong key
    let other = keys::generate().unwrap().verifying_key();
    assert!(matches!(
        load(&dir, &other).unwrap_err(),
        LoadError::Bundle(BundleError::BadSignature { .. })
    ));
    // an extra file
    let extra = root.path().join("extra");
    copy_dir(&dir, &extra);
    std::fs::write(extra.join("payload.sh"), b"#!/bin/sh\n").unwrap();
    let msg = load(&extra, &vk).unwrap_err().to_string();
    assert!(msg.contains("payload.sh"), "{msg}");
    // bad manifest JSON, even signed by the trusted key
    let badjson = root.path().join("badjson");
    copy_dir(&dir, &badjson);
    let text = b"{\"format\": \"edgecp-bundle\", \"format_version\": 1, ".to_vec();
    std::fs::write(badjson.join("manifest.json"), &text).unwrap();
    std::fs::write(badjson.join("manifest.sig"), keys::sign(&key, &text)).unwrap();
    let msg = load(&badjson, &vk).unwrap_err().to_string();
    assert!(
        msg.contains("manifest.json") && msg.contains("not JSON"),
        "{msg}"
    );
    // an unknown format version, signed
    let v2 = root.path().join("v2");
    copy_dir(&dir, &v2);
    let mut m = bundle::read_unverified(&dir).unwrap();
    m.format_version = 2;
    bundle::write_signed(&v2, &m, &key).unwrap();
    let msg = load(&v2, &vk).unwrap_err().to_string();
    assert!(msg.contains("version 2"), "{msg}");
}

/// onnxruntime through `load-dynamic` (scripts/test.sh runs this with `--features ort` and
/// ORT_DYLIB_PATH pointing at the test venv's libonnxruntime).
#[cfg(feature = "ort")]
#[test]
fn the_ort_runtime_serves_the_onnx_file_and_agrees_with_native() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "set ORT_DYLIB_PATH to a libonnxruntime.so (scripts/test.sh uses the test venv's)"
    );
    let root = tempfile::tempdir().unwrap();
    let (dir, _, key) = built_bundle(root.path());
    let vk = key.verifying_key();
    let native = load(&dir, &vk).unwrap();
    let opts = LoadOptions {
        runtime: Runtime::Ort,
        ..LoadOptions::default()
    };
    let m = loader::load(&dir, &vk, &opts).unwrap();
    assert_eq!(m.self_test.runtime, "ort");
    assert!(m.self_test.max_abs_diff <= 1e-4, "{:?}", m.self_test);
    let x: Vec<f32> = (0..5 * 32 * 32 * 3).map(|i| (i * 7 % 256) as f32).collect();
    let d = edge_agent::model::runtime::max_abs_diff(
        &m.engine.embed(&x).unwrap(),
        &native.engine.embed(&x).unwrap(),
    );
    assert!(d < 1e-4, "ort vs native: {d}");
    // bad input is an error, not a crash inside the library
    assert!(m.engine.embed(&x[..100]).is_err());
}

#[cfg(not(feature = "ort"))]
#[test]
fn the_ort_runtime_says_which_build_has_it() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _, key) = built_bundle(root.path());
    let opts = LoadOptions {
        runtime: Runtime::Ort,
        ..LoadOptions::default()
    };
    let msg = loader::load(&dir, &key.verifying_key(), &opts)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("--features ort"), "{msg}");
}

/// A signed bundle whose ONNX graph the native engine does not run (here: the L2
/// normalisation replaced by a Sigmoid the exporter never writes) is refused with the node
/// and a hint to use tract, which runs it.
#[test]
fn a_graph_outside_the_native_engine_names_the_node_and_the_alternative() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _, key) = built_bundle(root.path());
    let path = dir.join("model.onnx");
    let mut model = infer::onnx::Model::decode_bytes(&std::fs::read(&path).unwrap()).unwrap();
    let g = model.graph.as_mut().unwrap();
    let sqrt = g.node.iter_mut().find(|n| n.op_type == "Sqrt").unwrap();
    sqrt.op_type = "Sigmoid".into();
    std::fs::write(&path, prost::Message::encode_to_vec(&model)).unwrap();
    let mut m = bundle::read_unverified(&dir).unwrap();
    for f in &mut m.files {
        *f = bundle::file_entry(&dir, &f.name, &f.role).unwrap();
    }
    bundle::write_signed(&dir, &m, &key).unwrap();
    let msg = load(&dir, &key.verifying_key()).unwrap_err().to_string();
    assert!(
        msg.contains("model.onnx") && msg.contains("Sigmoid") && msg.contains("--runtime tract"),
        "{msg}"
    );
}

#[test]
fn a_signed_bundle_whose_model_misses_its_golden_outputs_fails_the_self_test() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _, key) = built_bundle(root.path());
    let gpath = dir.join("golden.safetensors");
    let mut g =
        shared::bundle::golden::Golden::parse(&std::fs::read(&gpath).unwrap(), "g").unwrap();
    g.expected[5] += 0.01;
    std::fs::write(&gpath, g.to_safetensors().unwrap()).unwrap();
    let mut m = bundle::read_unverified(&dir).unwrap();
    for f in &mut m.files {
        *f = bundle::file_entry(&dir, &f.name, &f.role).unwrap();
    }
    bundle::write_signed(&dir, &m, &key).unwrap();
    let err = load(&dir, &key.verifying_key()).unwrap_err();
    assert!(matches!(err, LoadError::SelfTest { .. }), "{err}");
    assert!(err.to_string().contains("model.onnx"), "{err}");
}

#[test]
fn the_assurance_line_follows_singletons_pairs_and_empty_sets() {
    let p = Predictor::from_reference(
        &reference_bytes(3),
        "reference.safetensors",
        NcmKind::NearestCentroid,
        false,
        PValueMode::Standard,
        shared::data::gtsrb_class_names(),
        DIM,
        None,
    )
    .unwrap();
    let c = centroids(3);
    let row = |k: usize| c[k * DIM..(k + 1) * DIM].to_vec();
    let mid: Vec<f32> = row(4)
        .iter()
        .zip(row(9))
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    // centroid 4 -> {4}; half way between 4 and 9 -> {4, 9} at 0.05, {} at 0.2
    let cases: [(Vec<f32>, f64, Vec<u16>); 5] = [
        (row(4), 0.05, vec![4]),
        (mid.clone(), 0.05, vec![4, 9]),
        (row(9), 0.05, vec![9]),
        (mid, 0.2, vec![]),
        (row(0), 0.2, vec![0]),
    ];
    let pin = MemoryPin::new();
    let a = Assurance::new(AlertRule::NotSingleton, Box::new(pin.clone()));
    for (x, eps, want) in &cases {
        let ans = p.answer(x, *eps).unwrap();
        assert_eq!(&ans[0].set, want, "epsilon {eps}");
        a.update([ans[0].set.len()]);
    }
    assert_eq!(pin.states(), [false, true, false, true, false]);
}

/// A reference file that also holds centroid distances (as the trainer writes them):
/// with the manifest naming them, every answer carries the distance of its embedding to
/// the nearest centroid, squashed by d / (1 + d); without, the min score as before; a
/// manifest naming a tensor the file lacks is refused.
#[test]
fn answers_carry_the_label_free_score_the_manifest_names() {
    let base = reference_bytes(3);
    let st = safetensors::SafeTensors::deserialize(&base).unwrap();
    let dist: Vec<u8> = (0..N_CAL)
        .map(|i| i as f64 * 0.5 / N_CAL as f64)
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    views.push((
        "calibration_centroid_distance".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![N_CAL], &dist).unwrap(),
    ));
    let with = safetensors::serialize(views, None).unwrap();
    let predictor = |bytes: &[u8], free: Option<&str>| {
        Predictor::from_reference(
            bytes,
            "reference.safetensors",
            NcmKind::NearestCentroid,
            false,
            PValueMode::Standard,
            shared::data::gtsrb_class_names(),
            DIM,
            free,
        )
    };
    let c = centroids(3);
    let row = |k: usize| c[k * DIM..(k + 1) * DIM].to_vec();
    // a tenth of the way from centroid 4 towards centroid 9
    let near: Vec<f32> = row(4)
        .iter()
        .zip(row(9))
        .map(|(a, b)| a + (b - a) * 0.1)
        .collect();
    let d = row(4)
        .iter()
        .zip(&near)
        .map(|(a, b)| f64::from((a - b) * (a - b)))
        .sum::<f64>()
        .sqrt();
    let p = predictor(&with, Some("calibration_centroid_distance")).unwrap();
    assert_eq!(
        p.label_free_kind(),
        Some(shared::icp::LabelFreeKind::CentroidDistance)
    );
    assert_eq!(p.label_free_calibration().map(<[f64]>::len), Some(N_CAL));
    let a = p.answer(&[row(4), near.clone()].concat(), 0.05).unwrap();
    assert!(a[0].label_free.abs() < 1e-6, "{}", a[0].label_free);
    assert!(
        (a[1].label_free - d / (1.0 + d)).abs() < 1e-5,
        "{} vs {}",
        a[1].label_free,
        d / (1.0 + d)
    );
    // no manifest choice: the min score, nearest over second nearest centroid
    let mut ds: Vec<f64> = (0..CLASSES)
        .map(|k| {
            row(k)
                .iter()
                .zip(&near)
                .map(|(a, b)| f64::from((a - b) * (a - b)))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    ds.sort_by(f64::total_cmp);
    let p = predictor(&with, None).unwrap();
    assert_eq!(
        p.label_free_kind(),
        Some(shared::icp::LabelFreeKind::MinScore)
    );
    let a = p.answer(&near, 0.05).unwrap();
    assert!(
        (a[0].label_free - ds[0] / ds[1]).abs() < 1e-4,
        "{} vs {}",
        a[0].label_free,
        ds[0] / ds[1]
    );
    // the manifest names scores the file lacks, or a tensor that is no label-free score
    let e = predictor(&base, Some("calibration_centroid_distance"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("calibration_centroid_distance"), "{e}");
    let e = predictor(&with, Some("centroids")).unwrap_err().to_string();
    assert!(e.contains("label-free scores \"centroids\""), "{e}");
}

/// Defect: `verify` hashed every file and dropped the bytes, and the loader read
/// `reference.safetensors` (and the model, and the golden data) from disk again, so a file
/// replaced between the two reads was served under the signed manifest. Here another
/// thread keeps replacing the reference data with other centroids while the bundle is
/// loaded again and again: every load must either refuse the bundle (digest) or answer
/// exactly as the signed bundle does.
#[test]
fn a_file_replaced_after_verification_is_never_used() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let root = tempfile::tempdir().unwrap();
    let (dir, _, key) = built_bundle(root.path());
    let vk = key.verifying_key();
    let x: Vec<f32> = (0..8 * 32 * 32 * 3)
        .map(|i| ((i * 31) % 256) as f32)
        .collect();
    let want = edge_agent::model::pipeline::answer(&load(&dir, &vk).unwrap(), &x, 0.05)
        .unwrap()
        .0;
    let good = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let evil = reference_bytes(4);
    assert_ne!(good, evil);
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, target, tmp) = (
            stop.clone(),
            dir.join("reference.safetensors"),
            root.path().join("swap.tmp"),
        );
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let data = if flips.is_multiple_of(2) {
                    &evil
                } else {
                    &good
                };
                std::fs::write(&tmp, data).unwrap();
                std::fs::rename(&tmp, &target).unwrap();
                flips += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            // leave the signed file in place
            std::fs::write(&tmp, &good).unwrap();
            std::fs::rename(&tmp, &target).unwrap();
            flips
        })
    };
    let (mut served, mut refused) = (0, 0);
    let t0 = Instant::now();
    while served < 25 && t0.elapsed() < Duration::from_secs(60) {
        match load(&dir, &vk) {
            Ok(m) => {
                let got = edge_agent::model::pipeline::answer(&m, &x, 0.05).unwrap().0;
                assert_eq!(
                    got,
                    want,
                    "load {}: answers of a swapped file",
                    served + refused
                );
                served += 1;
            }
            Err(LoadError::Bundle(BundleError::Digest { path, .. })) => {
                assert!(
                    path.ends_with("reference.safetensors"),
                    "{}",
                    path.display()
                );
                refused += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let flips = swapper.join().unwrap();
    assert!(
        served >= 5 && refused >= 1 && flips > 10,
        "served {served}, refused {refused}, flips {flips}"
    );
}
