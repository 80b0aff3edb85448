//! Test support of the exporter's tests: a network with non-trivial batch-norm statistics,
//! real GTSRB images, and the Python runtimes. Missing pieces fail loudly: a skipped check
//! proves nothing.
#![allow(dead_code)] // each test file uses a part

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shared::data::ImageSet;
use trainer::training::config::ModelConfig;
use trainer::training::model::{Arch, Backbone};

/// The shared data folder: `$EDGECP_DATA`, else `../shared/data` beside the workspace.
pub fn gtsrb_dir() -> PathBuf {
    let dir = std::env::var_os("EDGECP_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let g = dir.join("gtsrb");
    assert!(
        g.join("valid.images.u8.zst").is_file(),
        "GTSRB test data not found at {}: set the environment variable EDGECP_DATA to the \
         folder that holds gtsrb/ (the compact u8 files)",
        g.display()
    );
    g
}

/// `n` validation images spread over the whole split (so over many classes and tracks).
pub fn gtsrb_images(n: usize) -> ImageSet {
    let set = shared::data::compact::read_split(&gtsrb_dir(), "valid")
        .expect("reading the GTSRB validation split");
    let step = set.len() / n;
    let idx: Vec<usize> = (0..n).map(|i| i * step).collect();
    set.select(&idx)
}

/// A network whose every parameter and batch-norm statistic is random (so folding the
/// batch norm is really exercised), saved as `dir/model.safetensors`.
pub fn random_network(dir: &Path, batch_norm: bool, l2: bool, dim: usize, seed: u64) -> Backbone {
    let m = ModelConfig {
        embedding_dim: dim,
        batch_norm,
        dropout: 0.25,
        l2_normalize: l2,
    };
    let arch = Arch::new(32, &m).unwrap();
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut net = Backbone::new(arch, &dev, &mut rng).unwrap();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in net.named_tensors() {
        let n = t.elem_count();
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let v: Vec<f32> = if name.ends_with("running_var") {
            (0..n).map(|_| rng.random_range(0.2..2.0)).collect()
        } else if name.ends_with("running_mean") || name.ends_with(".bias") {
            (0..n).map(|_| rng.random_range(-0.3..0.3)).collect()
        } else if name.starts_with("bn") {
            (0..n).map(|_| rng.random_range(0.5..1.5)).collect()
        } else {
            v
        };
        tensors.insert(name, Tensor::from_vec(v, t.shape(), &dev).unwrap());
    }
    net.load_tensors(&tensors).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    net.save(&dir.join("model.safetensors")).unwrap();
    net
}

/// The test venv's python: `$EDGECP_PYTHON`, else the one `scripts/pyenv.sh` makes.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("EDGECP_PYTHON") {
        if !p.trim().is_empty() {
            return PathBuf::from(p.trim());
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pyenv.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}); set EDGECP_PYTHON", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}\nset EDGECP_PYTHON to a python with onnx, onnxruntime and ai-edge-litert",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().unwrap_or("").trim())
}

/// Runs `scripts/py/<script> <dir>` and parses the JSON object on its last line.
pub fn run_python(script: &str, dir: &Path) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/py")
        .join(script);
    let py = python();
    let out = Command::new(&py)
        .arg(&path)
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}); set EDGECP_PYTHON", py.display()));
    assert!(
        out.status.success(),
        "{script} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("a JSON line")
}

/// Writes an f32 slice as raw little-endian bytes.
pub fn write_f32(path: &Path, v: &[f32]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}
