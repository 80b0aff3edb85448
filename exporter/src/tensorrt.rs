//! TensorRT engines through NVIDIA's `trtexec`: the exact argument list is built here (and
//! tested), so that the input shape is always set (the reference pipeline's script forgot
//! it) and the engine carries an optimisation profile for batch 1..64.

use std::path::{Path, PathBuf};

/// Optimisation profile: smallest, most frequent and largest batch.
pub const PROFILE: (usize, usize, usize) = (1, 32, 64);

/// What to build.
#[derive(Clone, Debug)]
pub struct EngineRequest {
    pub onnx: PathBuf,
    pub side: usize,
    pub fp16: bool,
    /// GPU name as `nvidia-smi` reports it.
    pub gpu: String,
    /// TensorRT version, e.g. `10.3.0`.
    pub tensorrt_version: String,
    pub out_dir: PathBuf,
}

/// A file-name-safe form of a GPU or version name.
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// The engine's file name: engines only run on the GPU model and TensorRT version that
/// built them, so both are in the name.
pub fn engine_file_name(req: &EngineRequest) -> String {
    format!(
        "model.{}.trt{}.{}.plan",
        slug(&req.gpu),
        slug(&req.tensorrt_version),
        if req.fp16 { "fp16" } else { "fp32" }
    )
}

/// The engine's path.
pub fn engine_path(req: &EngineRequest) -> PathBuf {
    req.out_dir.join(engine_file_name(req))
}

/// The exact `trtexec` arguments for `req`.
pub fn trtexec_args(req: &EngineRequest) -> Vec<String> {
    let s = req.side;
    let shape = |n: usize| format!("{}:{n}x{s}x{s}x3", crate::onnx::INPUT_NAME);
    let mut args = vec![
        format!("--onnx={}", req.onnx.display()),
        format!("--minShapes={}", shape(PROFILE.0)),
        format!("--optShapes={}", shape(PROFILE.1)),
        format!("--maxShapes={}", shape(PROFILE.2)),
        format!("--saveEngine={}", engine_path(req).display()),
        "--skipInference".to_string(),
    ];
    if req.fp16 {
        args.push("--fp16".to_string());
    }
    args
}

/// Why no engine could be built.
pub fn missing_trtexec_message(path_var: Option<&str>) -> String {
    format!(
        "TensorRT is not available: `trtexec` was not found on PATH ({}).\n\
         Building an engine needs, on the machine with the target GPU:\n  \
         - an NVIDIA GPU with its driver (nvidia-smi must list it),\n  \
         - TensorRT 8.6 or newer with its `trtexec` binary on PATH (e.g. /usr/src/tensorrt/bin from \
         the tensorrt package, or TensorRT-*/bin from NVIDIA's tar file),\n  \
         - the CUDA runtime libraries TensorRT was built for on LD_LIBRARY_PATH.\n\
         Engines are specific to the GPU model and TensorRT version: build them on the device \
         (or an identical one), then add them to the bundle.",
        path_var.unwrap_or("unset")
    )
}

/// `trtexec` on PATH, if any.
pub fn find_trtexec() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("trtexec"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(fp16: bool) -> EngineRequest {
        EngineRequest {
            onnx: PathBuf::from("/b/model.onnx"),
            side: 32,
            fp16,
            gpu: "NVIDIA H100 80GB HBM3".into(),
            tensorrt_version: "10.3.0".into(),
            out_dir: PathBuf::from("/b"),
        }
    }

    #[test]
    fn trtexec_arguments_set_the_input_shape_and_a_batch_profile() {
        assert_eq!(
            trtexec_args(&req(true)),
            vec![
                "--onnx=/b/model.onnx",
                "--minShapes=input:1x32x32x3",
                "--optShapes=input:32x32x32x3",
                "--maxShapes=input:64x32x32x3",
                "--saveEngine=/b/model.nvidia-h100-80gb-hbm3.trt10.3.0.fp16.plan",
                "--skipInference",
                "--fp16",
            ]
        );
        let fp32 = trtexec_args(&req(false));
        assert_eq!(fp32.len(), 6);
        assert!(fp32[4].ends_with(".fp32.plan"));
    }

    #[test]
    fn the_missing_trtexec_message_says_what_is_needed() {
        let m = missing_trtexec_message(Some("/usr/bin"));
        assert!(m.contains("`trtexec` was not found on PATH (/usr/bin)"));
        assert!(m.contains("TensorRT 8.6 or newer"));
        assert!(m.contains("NVIDIA GPU"));
    }
}
