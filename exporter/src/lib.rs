//! Trained weights -> ONNX, TFLite (and TensorRT where present), each checked against the
//! trained network; signed model bundles (format in `docs/BUNDLE.md`, types in
//! `shared::bundle`).

pub mod bench;
pub mod bundle;
pub mod evaluate;
pub mod export;
pub mod golden;
pub mod net;
pub mod onnx;
pub mod quantize;
pub mod runtime;
pub mod source;
pub mod tensorrt;
pub mod tflite;
