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
            shape: vec![-1, SIDE as i64, SIDE as i64, 3],
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
            shape: vec![-1, DIM as i64],
            dtype: "float32".into(),
            l2_normalized: true,
        },
        arch: serde_json::json!({"side": SIDE}),
        class_names: vec!["a".into(), "b".into()],
        icp: IcpSpec {
            ncm: crate::icp::NcmKind::NearestCentroid,
            mondrian: false,
            p_values: crate::icp::PValueMode::Standard,
            epsilon: 0.05,
            calibration_scores: "calibration_scores.nearest_centroid".into(),
            n_calibration: N_CAL as u64,
            calibration: None,
        },
        models: vec![ModelEntry {
            file: "model.onnx".into(),
            format: "onnx".into(),
            precision: "float32".into(),
            opset: Some(13),
            target: None,
            max_abs_diff: 1e-6,
            parity_checked: true,
        }],
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

const SIDE: usize = 2;
const DIM: usize = 4;
const N_CAL: usize = 3;

/// reference.safetensors: two centroids and the calibration scores.
fn reference_file() -> Vec<u8> {
    use safetensors::tensor::TensorView;
    let c: Vec<u8> = (0..2 * DIM)
        .flat_map(|i| (i as f32 * 0.25).to_le_bytes())
        .collect();
    let s: Vec<u8> = (0..N_CAL).flat_map(|i| (i as f64).to_le_bytes()).collect();
    let views = vec![
        (
            "centroids",
            TensorView::new(safetensors::Dtype::F32, vec![2, DIM], &c).unwrap(),
        ),
        (
            "calibration_scores.nearest_centroid",
            TensorView::new(safetensors::Dtype::F64, vec![N_CAL], &s).unwrap(),
        ),
        (
            "calibration_label_free.nearest_centroid",
            TensorView::new(safetensors::Dtype::F64, vec![N_CAL], &s).unwrap(),
        ),
        (
            "calibration_centroid_distance",
            TensorView::new(safetensors::Dtype::F64, vec![N_CAL], &s).unwrap(),
        ),
    ];
    safetensors::serialize(views, None).unwrap()
}

/// golden.safetensors with one input.
fn golden_file() -> Vec<u8> {
    golden::Golden {
        side: SIDE,
        dim: DIM,
        inputs: (0..SIDE * SIDE * 3).map(|v| v as u8).collect(),
        labels: vec![1],
        expected: vec![0.5; DIM],
    }
    .to_safetensors()
    .unwrap()
}

/// Writes `files` (name, role, bytes) and a manifest made by `edit` from the sample one,
/// signed with `key`.
fn write_bundle(
    dir: &Path,
    key: &ed25519_dalek::SigningKey,
    files: &[(&str, &str, Vec<u8>)],
    edit: impl FnOnce(&mut Manifest),
) {
    let mut entries = vec![];
    for (name, role, data) in files {
        std::fs::write(dir.join(name), data).unwrap();
        entries.push(file_entry(dir, name, role).unwrap());
    }
    let mut m = sample_manifest(entries);
    edit(&mut m);
    write_signed(dir, &m, key).unwrap();
}

fn sample_files() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![
        (
            "model.onnx",
            "onnx",
            (0..40).map(|i| (i * 7) as u8).collect(),
        ),
        ("reference.safetensors", "reference", reference_file()),
        ("golden.safetensors", "golden", golden_file()),
    ]
}

/// A signed bundle of three small files in `dir`; returns the key.
fn make_bundle(dir: &Path) -> ed25519_dalek::SigningKey {
    let key = keys::generate().unwrap();
    write_bundle(dir, &key, &sample_files(), |_| {});
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
    let mut b = verify(dir.path(), &key.verifying_key()).unwrap();
    assert_eq!(b.manifest.files.len(), 3);
    assert_eq!(b.manifest.model_id, "m1");
    // the bytes that were hashed come with the bundle; only listed names
    assert_eq!(b.file("golden.safetensors").unwrap(), golden_file());
    assert!(matches!(
        b.file("manifest.json"),
        Err(BundleError::NotVerified { .. })
    ));
    assert_eq!(
        b.take_file("reference.safetensors").unwrap(),
        reference_file()
    );
    b.release_files();
    assert!(b.file("model.onnx").is_err());
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

/// A change to the sample manifest.
type Edit = Box<dyn Fn(&mut Manifest)>;

/// Signs `bytes` as the manifest of `dir`.
fn sign_raw(dir: &Path, key: &ed25519_dalek::SigningKey, bytes: &[u8]) {
    std::fs::write(dir.join(MANIFEST_FILE), bytes).unwrap();
    std::fs::write(dir.join(SIGNATURE_FILE), keys::sign(key, bytes)).unwrap();
}

/// Runs `f` on another thread and fails the test if it takes longer than `secs` (a read
/// that blocks on a FIFO would otherwise hang the test run).
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what}: no answer within {secs} s"))
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

#[test]
fn every_file_a_manifest_field_names_must_be_one_of_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let stray = outside.path().join("ref.safetensors");
    std::fs::write(&stray, reference_file()).unwrap();
    let key = keys::generate().unwrap();
    let cases: Vec<(&str, Edit)> = vec![
        (
            "reference",
            Box::new(move |m| m.reference = stray.display().to_string()),
        ),
        (
            "reference",
            Box::new(|m| m.reference = "../../reference.safetensors".into()),
        ),
        (
            "reference",
            Box::new(|m| m.reference = "golden.safetensors".into()),
        ),
        (
            "golden.file",
            Box::new(|m| m.golden.file = "/etc/passwd".into()),
        ),
        (
            "models[0].file",
            Box::new(|m| m.models[0].file = "./model.onnx".into()),
        ),
        (
            "models[0].file",
            Box::new(|m| m.models[0].file = "reference.safetensors".into()),
        ),
    ];
    for (field, edit) in cases {
        for f in std::fs::read_dir(dir.path()).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        write_bundle(dir.path(), &key, &sample_files(), edit);
        let err = verify(dir.path(), &key.verifying_key()).unwrap_err();
        assert!(
            matches!(&err, BundleError::Invalid { field: f, .. } if f == field),
            "{field}: {err}"
        );
    }
}

#[cfg(unix)]
#[test]
fn files_that_are_not_regular_or_are_too_large_are_refused_before_reading() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let key = make_bundle(dir.path());
    let public = key.verifying_key();
    let d = dir.path().to_path_buf();
    let swap = |name: &str, make: &dyn Fn(&Path)| {
        let p = d.join(name);
        let saved = std::fs::read(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        make(&p);
        let (dd, pk) = (d.clone(), public);
        let res = within(10, name, move || verify(&dd, &pk).map(|_| ()));
        if p.is_dir() {
            std::fs::remove_dir(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
        std::fs::write(&p, saved).unwrap();
        res.unwrap_err()
    };
    for name in ["model.onnx", MANIFEST_FILE, SIGNATURE_FILE] {
        let e = swap(name, &|p| symlink("/dev/zero", p).unwrap());
        assert!(matches!(e, BundleError::Symlink { .. }), "{name}: {e}");
        assert!(e.to_string().contains(name), "{e}");
        let e = swap(name, &|p| mkfifo(p));
        assert!(matches!(e, BundleError::NotRegular { .. }), "{name}: {e}");
        assert!(e.to_string().contains("FIFO"), "{e}");
        let e = swap(name, &|p| std::fs::create_dir(p).unwrap());
        assert!(matches!(e, BundleError::NotRegular { .. }), "{name}: {e}");
    }
    // a link to a regular file inside the bundle is still a link
    let e = swap("model.onnx", &|p| symlink("golden.safetensors", p).unwrap());
    assert!(matches!(e, BundleError::Symlink { .. }), "{e}");
    // a sparse 4 GB file listed as 40 bytes: refused by its size, not read
    let t = std::time::Instant::now();
    let e = swap("model.onnx", &|p| {
        std::fs::File::create(p).unwrap().set_len(4 << 30).unwrap()
    });
    assert!(
        matches!(e, BundleError::Size { found, .. } if found == 4 << 30),
        "{e}"
    );
    assert!(t.elapsed().as_secs() < 2, "{:?}", t.elapsed());
    // a manifest larger than any real one, and a signature of the wrong size
    let e = swap(MANIFEST_FILE, &|p| {
        std::fs::File::create(p)
            .unwrap()
            .set_len(MAX_MANIFEST_BYTES + 1)
            .unwrap()
    });
    assert!(matches!(e, BundleError::TooLarge { .. }), "{e}");
    let e = swap(SIGNATURE_FILE, &|p| std::fs::write(p, [0u8; 1000]).unwrap());
    assert!(e.to_string().contains("is 1000 bytes"), "{e}");
    verify(dir.path(), &public).unwrap();

    // key files may be links, but to a regular file of bounded size
    let (_, paths) = keys::load_or_create(dir.path(), "k").unwrap();
    let link = dir.path().join("k.link");
    symlink(&paths.public, &link).unwrap();
    keys::read_public(&link).unwrap();
    for (target, what) in [
        ("/dev/zero", "character device"),
        ("/dev/null", "character device"),
    ] {
        let l = dir.path().join("dev.pub");
        let _ = std::fs::remove_file(&l);
        symlink(target, &l).unwrap();
        let e = within(10, target, move || keys::read_public(&l).unwrap_err());
        assert!(e.to_string().contains(what), "{e}");
    }
    let fifo = dir.path().join("fifo.pub");
    mkfifo(&fifo);
    let e = within(10, "fifo key", move || {
        keys::read_public(&fifo).unwrap_err()
    });
    assert!(e.to_string().contains("FIFO"), "{e}");
    let big = dir.path().join("big.pub");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let e = keys::read_public(&big).unwrap_err();
    assert!(matches!(e, BundleError::TooLarge { .. }), "{e}");
}

#[test]
fn signed_manifests_that_say_impossible_things_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = keys::generate().unwrap();
    let fresh = |edit: &dyn Fn(&mut Manifest)| {
        for f in std::fs::read_dir(dir.path()).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        write_bundle(dir.path(), &key, &sample_files(), edit);
        verify(dir.path(), &key.verifying_key())
    };
    fresh(&|_| {}).unwrap();
    // the calibration's grouping and label-free scores, as the exporter writes them
    let grouped = fresh(&|m| {
        m.icp.calibration = Some(CalibrationInfo {
            grouped_by: "track".into(),
            groups: 2,
            label_free_scores: Some("calibration_label_free.nearest_centroid".into()),
        })
    })
    .unwrap();
    assert_eq!(grouped.manifest.icp.calibration.map(|c| c.groups), Some(2));
    // or the centroid distances, the exporter's first choice
    fresh(&|m| {
        m.icp.calibration = Some(CalibrationInfo {
            grouped_by: "track".into(),
            groups: 2,
            label_free_scores: Some("calibration_centroid_distance".into()),
        })
    })
    .unwrap();
    let cases: Vec<(&str, Edit)> = vec![
        ("golden.tolerance", Box::new(|m| m.golden.tolerance = 1e30)),
        ("golden.tolerance", Box::new(|m| m.golden.tolerance = 0.0)),
        ("golden.count", Box::new(|m| m.golden.count = 2)),
        (
            "icp.n_calibration",
            Box::new(|m| m.icp.n_calibration = 1_000_000_000_000_000_000),
        ),
        (
            "icp.calibration_scores",
            Box::new(|m| m.icp.calibration_scores = "calibration_scores.knn40".into()),
        ),
        ("icp.epsilon", Box::new(|m| m.icp.epsilon = 1.5)),
        (
            "icp.calibration.groups",
            Box::new(|m| {
                m.icp.calibration = Some(CalibrationInfo {
                    grouped_by: "track".into(),
                    groups: N_CAL as u64 + 1,
                    label_free_scores: None,
                })
            }),
        ),
        (
            "icp.calibration.grouped_by",
            Box::new(|m| {
                m.icp.calibration = Some(CalibrationInfo {
                    grouped_by: "../track".into(),
                    groups: 1,
                    label_free_scores: None,
                })
            }),
        ),
        (
            "icp.calibration.label_free_scores",
            Box::new(|m| {
                m.icp.calibration = Some(CalibrationInfo {
                    grouped_by: "track".into(),
                    groups: 1,
                    label_free_scores: Some("calibration_label_free.knn40".into()),
                })
            }),
        ),
        (
            "icp.calibration.label_free_scores",
            Box::new(|m| {
                m.icp.calibration = Some(CalibrationInfo {
                    grouped_by: "track".into(),
                    groups: 1,
                    label_free_scores: Some("centroids".into()),
                })
            }),
        ),
        ("models", Box::new(|m| m.models.clear())),
        (
            "models[0]",
            Box::new(|m| m.models[0].format = "pytorch".into()),
        ),
        (
            "models[0].parity_checked",
            Box::new(|m| m.models[0].max_abs_diff = 0.5),
        ),
        (
            "class_names",
            Box::new(|m| m.class_names.push("phantom".into())),
        ),
        (
            "class_names[1]",
            Box::new(|m| m.class_names[1] = "a".into()),
        ),
        ("model_id", Box::new(|m| m.model_id = "../../etc".into())),
        (
            "input.shape",
            Box::new(|m| m.input.shape = vec![-1, 0, 0, 3]),
        ),
        (
            "golden.file",
            Box::new(|m| m.input.shape = vec![-1, 3, 3, 3]),
        ),
        ("output.shape", Box::new(|m| m.output.shape = vec![-1, 0])),
        ("golden.file", Box::new(|m| m.output.shape = vec![-1, 5])),
        (
            "files[0].role",
            Box::new(|m| m.files[0].role = "weights".into()),
        ),
        (
            "reference",
            Box::new(|m| {
                m.icp.ncm = crate::icp::NcmKind::KNN40;
                m.icp.calibration_scores = "calibration_scores.knn40".into();
            }),
        ),
    ];
    for (field, edit) in cases {
        let err = fresh(&*edit).unwrap_err();
        assert!(
            matches!(&err, BundleError::Invalid { field: f, .. } if f == field),
            "{field}: {err}"
        );
        assert!(err.to_string().contains(field), "{err}");
    }

    // unknown fields anywhere, also inside the tagged enums
    let m = fresh(&|_| {}).unwrap().manifest;
    let base = serde_json::to_value(&m).unwrap();
    for (path, field) in [
        ("/input/normalization", "input.normalization.extra"),
        ("/icp/ncm", "icp.ncm.extra"),
        ("/icp/p_values", "icp.p_values.extra"),
        ("/models/0", "models[0].extra"),
        ("/golden", "golden.extra"),
        ("", "extra"),
    ] {
        let mut v = base.clone();
        v.pointer_mut(path)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .insert("extra".into(), serde_json::json!(1));
        sign_raw(dir.path(), &key, &serde_json::to_vec(&v).unwrap());
        let err = verify(dir.path(), &key.verifying_key()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("unknown field") && (text.contains(field) || text.contains("`extra`")),
            "{field}: {text}"
        );
    }
}

#[test]
fn a_class_without_training_examples_is_a_phantom_and_refused() {
    use safetensors::tensor::TensorView;
    let emb: Vec<u8> = (0..3 * DIM)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    let labels: Vec<u8> = [0u16, 0, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let scores: Vec<u8> = (0..N_CAL).flat_map(|i| (i as f64).to_le_bytes()).collect();
    let reference = safetensors::serialize(
        vec![
            (
                "train_embeddings",
                TensorView::new(safetensors::Dtype::F32, vec![3, DIM], &emb).unwrap(),
            ),
            (
                "train_labels",
                TensorView::new(safetensors::Dtype::U16, vec![3], &labels).unwrap(),
            ),
            (
                "calibration_scores.knn2",
                TensorView::new(safetensors::Dtype::F64, vec![N_CAL], &scores).unwrap(),
            ),
        ],
        None,
    )
    .unwrap();
    let mut files = sample_files();
    files[1].2 = reference;
    let knn = |m: &mut Manifest| {
        m.icp.ncm = crate::icp::NcmKind::Knn { k: 2 };
        m.icp.calibration_scores = "calibration_scores.knn2".into();
    };
    let dir = tempfile::tempdir().unwrap();
    let key = keys::generate().unwrap();
    write_bundle(dir.path(), &key, &files, knn);
    verify(dir.path(), &key.verifying_key()).unwrap();
    // a third class name: no training example of class 2
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path(), &key, &files, |m| {
        knn(m);
        m.class_names.push("c".into());
    });
    let err = verify(dir.path(), &key.verifying_key()).unwrap_err();
    assert!(
        err.to_string()
            .contains("class 2 (\"c\") has no training example"),
        "{err}"
    );
}

#[test]
fn manifest_from_bytes_checks_what_it_can_without_the_files() {
    let entry = |name: &str, sha: &str, bytes: u64| FileEntry {
        name: name.into(),
        role: "onnx".into(),
        sha256: sha.into(),
        bytes,
    };
    let good = "ab".repeat(32);
    let p = Path::new(MANIFEST_FILE);
    let bytes = |m: &Manifest| serde_json::to_vec(m).unwrap();
    let m = sample_manifest(vec![entry("model.onnx", &good, 10)]);
    assert_eq!(manifest_from_bytes(&bytes(&m), p).unwrap(), m);
    for (files, want) in [
        (vec![entry("../x", &good, 1)], "not a plain file name"),
        (
            vec![entry("a", &good, 1), entry("a", &good, 1)],
            "listed twice",
        ),
        (vec![entry("a", &"AB".repeat(32), 1)], "lowercase hex"),
        (vec![entry("a", &good, MAX_FILE_BYTES + 1)], "bytes allowed"),
    ] {
        let e = manifest_from_bytes(&bytes(&sample_manifest(files)), p).unwrap_err();
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
    let mut m = sample_manifest(vec![]);
    m.model_id = "..".into();
    let e = manifest_from_bytes(&bytes(&m), p).unwrap_err();
    assert!(e.to_string().contains("model_id"), "{e}");
    let big = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
    assert!(matches!(
        manifest_from_bytes(&big, p),
        Err(BundleError::TooLarge { .. })
    ));
}

/// Found by fuzzing (fuzz/fuzz_targets/manifest.rs): a number beyond f32's range read as
/// infinity, which a manifest written back cannot hold.
#[test]
fn manifest_numbers_beyond_f32_are_refused_by_field() {
    let m = sample_manifest(vec![]);
    let mut v = serde_json::to_value(&m).unwrap();
    v["input"]["value_range"][1] = serde_json::json!(1e39);
    let e = manifest_from_bytes(&serde_json::to_vec(&v).unwrap(), Path::new(MANIFEST_FILE))
        .unwrap_err();
    assert!(e.to_string().contains("input.value_range[1]"), "{e}");
    let mut v = serde_json::to_value(&m).unwrap();
    v["input"]["normalization"]["scale"] = serde_json::json!(-3.5e38);
    let e = manifest_from_bytes(&serde_json::to_vec(&v).unwrap(), Path::new(MANIFEST_FILE))
        .unwrap_err();
    assert!(e.to_string().contains("normalization.scale"), "{e}");
}
