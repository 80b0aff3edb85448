//! `exporter tensorrt` without TensorRT: it says what it needs and exits non-zero (only
//! with the `tensorrt` feature: `cargo test -p exporter --features tensorrt`).
#![cfg(feature = "tensorrt")]

#[test]
fn without_trtexec_the_command_says_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_exporter"))
        .args(["tensorrt", "--run", "/nonexistent", "--out"])
        .arg(dir.path())
        .env("PATH", dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("`trtexec` was not found on PATH"), "{err}");
    assert!(err.contains("TensorRT 8.6 or newer"), "{err}");
}
