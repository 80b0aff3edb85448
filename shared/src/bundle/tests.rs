use std::collections::BTreeMap;
use std::path::Path;

use super::*;

fn sample_manifest(files: Vec<FileEntry>) -> Manifest {
    Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        model_id: "m1".into(),
        run_id: "r1".into(),
        created_ms: 1,
        producer: "test".into(),
        input: InputSpec {
            name: "input".into(),
            shape: vec![-1, 32, 32, 3],
            layout: "NHWC".into(),
            dtype: "float32".into(),
            color: "RGB".into(),
            value_range: [0.0, 255.0],
            normalization: Normalization {
                scale: 1.0 / 255.0,
                offset: -0.5,
                in_graph: true,
            },
        },
        output: OutputSpec {
            name: "embedding".into(),
            shape: vec![-1, 8],
            dtype: "float32".into(),
            l2_normalized: true,
        },
        arch: serde_json::json!({"side": 32}),
        class_names: vec!["a".into(), "b".into()],
        icp: IcpSpec {
            ncm: crate::icp::NcmKind::NearestCentroid,
            mondrian: false,
            p_values: crate::icp::PValueMode::Standard,
            epsilon: 0.05,
            calibration_scores: "calibration_scores.nearest_centroid".into(),
            n_calibration: 3,
        },
        models: vec![],
        reference: "reference.safetensors".into(),
        golden: GoldenSpec {
            file: "golden.safetensors".into(),
            count: 1,
            tolerance: 1e-4,
        },
        metrics: BTreeMap::from([("acc".to_string(), 0.5)]),
        files,
    }
}

/// A signed bundle of three small files in `dir`; returns the key.
fn make_bundle(dir: &Path) -> ed25519_dalek::SigningKey {
    let mut files = vec![];
    for (name, role, len) in [
        ("model.onnx", "onnx", 40usize),
        ("reference.safetensors", "reference", 33),
        ("golden.safetensors", "golden", 17),
    ] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + name.len()) as u8).collect();
        std::fs::write(dir.join(name), data).unwrap();
        files.push(file_entry(dir, name, role).unwrap());
    }
    let key = keys::generate().unwrap();
    write_signed(dir, &sample_manifest(files), &key).unwrap();
    key
}

fn all_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn a_signed_bundle_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let key = make_bundle(dir.path());
    let b = verify(dir.path(), &key.verifying_key()).unwrap();
    assert_eq!(b.manifest.files.len(), 3);
    assert_eq!(b.manifest.model_id, "m1");
}

#[test]
fn every_single_byte_change_of_every_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let key = make_bundle(dir.path());
    let public = key.verifying_key();
    let files = all_files(dir.path());
    assert_eq!(files.len(), 5, "three files, manifest, signature");
    let mut checked = 0;
    for path in &files {
        let original = std::fs::read(path).unwrap();
        for i in 0..original.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut changed = original.clone();
                changed[i] ^= flip;
                std::fs::write(path, &changed).unwrap();
                assert!(
                    verify(dir.path(), &public).is_err(),
                    "{} byte {i} ^ {flip:#x} accepted",
                    path.display()
                );
                checked += 1;
            }
        }
        // truncated and extended
        std::fs::write(path, &original[..original.len() - 1]).unwrap();
        assert!(verify(dir.path(), &public).is_err());
        let mut longer = original.clone();
        longer.push(0);
        std::fs::write(path, &longer).unwrap();
        assert!(verify(dir.path(), &public).is_err());
        std::fs::write(path, &original).unwrap();
        verify(dir.path(), &public).unwrap();
    }
    assert!(checked > 1000);
}

#[test]
fn another_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    make_bundle(dir.path());
    let other = keys::generate().unwrap();
    let err = verify(dir.path(), &other.verifying_key()).unwrap_err();
    assert!(matches!(err, BundleError::BadSignature { .. }), "{err}");
    assert!(err.to_string().contains("manifest.sig"), "{err}");
}

#[test]
fn an_unknown_format_version_is_rejected_even_when_signed() {
    let dir = tempfile::tempdir().unwrap();
    let key = make_bundle(dir.path());
    let mut m = read_unverified(dir.path()).unwrap();
    m.format_version = 2;
    // write a correctly signed manifest of version 2
    let bytes = serde_json::to_vec_pretty(&m).unwrap();
    std::fs::write(dir.path().join(MANIFEST_FILE), &bytes).unwrap();
    std::fs::write(dir.path().join(SIGNATURE_FILE), keys::sign(&key, &bytes)).unwrap();
    let err = verify(dir.path(), &key.verifying_key()).unwrap_err();
    assert!(
        matches!(err, BundleError::UnknownVersion { found: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("format version 2"), "{err}");
}

#[test]
fn an_unlisted_file_and_an_escaping_name_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let key = make_bundle(dir.path());
    std::fs::write(dir.path().join("extra.bin"), b"x").unwrap();
    let err = verify(dir.path(), &key.verifying_key()).unwrap_err();
    assert!(matches!(err, BundleError::Unlisted { .. }), "{err}");
    std::fs::remove_file(dir.path().join("extra.bin")).unwrap();

    let mut m = read_unverified(dir.path()).unwrap();
    m.files[0].name = "../model.onnx".into();
    write_signed(dir.path(), &m, &key).unwrap();
    let err = verify(dir.path(), &key.verifying_key()).unwrap_err();
    assert!(err.to_string().contains("not a plain file name"), "{err}");
}

#[test]
fn keys_round_trip_through_pem() {
    let dir = tempfile::tempdir().unwrap();
    let (key, paths) = keys::load_or_create(dir.path(), "signing").unwrap();
    let (again, _) = keys::load_or_create(dir.path(), "signing").unwrap();
    assert_eq!(key.to_bytes(), again.to_bytes());
    let public = keys::read_public(&paths.public).unwrap();
    assert_eq!(public, key.verifying_key());
    let text = std::fs::read_to_string(&paths.public).unwrap();
    assert!(text.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    // a private key where a public one is expected names the file and the problem
    let err = keys::read_public(&paths.private).unwrap_err();
    assert!(err.to_string().contains("signing.key"), "{err}");
}
