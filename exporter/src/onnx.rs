//! ONNX writer: the folded network as an ONNX model, encoded with prost from the protobuf
//! types tract-onnx generates (`tract_onnx::pb`).
//!
//! Graph (opset 13, IR version 8):
//! ```text
//! input  f32 [N, S, S, 3] NHWC, raw pixel values 0..255 (N dynamic)
//! Mul(1/255) -> Add(-0.5) -> Transpose(0,3,1,2)
//! Conv 5x5 pad 2 -> Relu -> Conv 3x3 pad 1 -> Relu -> MaxPool 2 -> Conv 3x3 pad 1 -> Relu -> MaxPool 2
//! Flatten(1) -> Gemm(transB) -> [Mul(y,y) -> ReduceSum(1, keepdims) -> Add(1e-12) -> Sqrt -> Div]
//! output f32 [N, E] "embedding"
//! ```
//! Batch norm is folded into the convolutions; see [`crate::net`] for why the input
//! normalisation stays as two ops.

use prost::Message;
use tract_onnx::pb;

use crate::net::FoldedNet;

/// The opset the writer targets (ReduceSum takes its axes as an input from 13 on).
pub const OPSET: i64 = 13;
/// The newest default-domain opset a bundle's model may declare and still load here.
pub const MAX_OPSET: i64 = 21;
/// ONNX IR version written (IR 8 covers opsets up to 17).
pub const IR_VERSION: i64 = 8;
/// Name of the graph input.
pub const INPUT_NAME: &str = "input";
/// Name of the graph output.
pub const OUTPUT_NAME: &str = "embedding";

/// Why an ONNX file was refused.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("{file}: not a valid ONNX protobuf (truncated or corrupt?): {source}")]
    Decode {
        file: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error(
        "{file}: default-domain opset {found} is outside the supported range {OPSET}..={MAX_OPSET}"
    )]
    Opset { file: String, found: i64 },
    #[error("{file}: declares no default-domain opset")]
    NoOpset { file: String },
    #[error("{file}: {what}")]
    Graph { file: String, what: String },
}

fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn f32_tensor(name: &str, dims: &[usize], v: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn i64_tensor(name: &str, dims: &[usize], v: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Option<usize>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => Value::DimValue(*v as i64),
                None => Value::DimParam("N".into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ONNX model of `net`, with `metadata` as model metadata properties.
pub fn model_proto(net: &FoldedNet, metadata: &[(String, String)]) -> pb::ModelProto {
    let s = net.arch.side;
    let e = net.arch.embedding_dim;
    let mut nodes = Vec::new();
    let mut inits = vec![
        f32_tensor("input_scale", &[], &[net.input_scale]),
        f32_tensor("input_offset", &[], &[net.input_offset]),
    ];
    nodes.push(node(
        "Mul",
        "scale",
        &[INPUT_NAME, "input_scale"],
        "scaled",
        vec![],
    ));
    nodes.push(node(
        "Add",
        "offset",
        &["scaled", "input_offset"],
        "normalized",
        vec![],
    ));
    nodes.push(node(
        "Transpose",
        "to_nchw",
        &["normalized"],
        "nchw",
        vec![attr_ints("perm", &[0, 3, 1, 2])],
    ));
    let mut x = "nchw".to_string();
    for (i, c) in net.convs.iter().enumerate() {
        let n = i + 1;
        let (w, b) = (format!("conv{n}.weight"), format!("conv{n}.bias"));
        inits.push(f32_tensor(
            &w,
            &[c.out_channels, c.in_channels, c.kernel, c.kernel],
            &c.weight,
        ));
        inits.push(f32_tensor(&b, &[c.out_channels], &c.bias));
        let p = (c.kernel / 2) as i64;
        let k = c.kernel as i64;
        let conv_out = format!("conv{n}");
        nodes.push(node(
            "Conv",
            &conv_out,
            &[&x, &w, &b],
            &conv_out,
            vec![
                attr_ints("kernel_shape", &[k, k]),
                attr_ints("pads", &[p, p, p, p]),
                attr_ints("strides", &[1, 1]),
                attr_ints("dilations", &[1, 1]),
                attr_int("group", 1),
            ],
        ));
        let relu = format!("relu{n}");
        nodes.push(node("Relu", &relu, &[&conv_out], &relu, vec![]));
        x = relu;
        if c.pool > 1 {
            let pool = format!("pool{n}");
            let q = c.pool as i64;
            nodes.push(node(
                "MaxPool",
                &pool,
                &[&x],
                &pool,
                vec![
                    attr_ints("kernel_shape", &[q, q]),
                    attr_ints("strides", &[q, q]),
                ],
            ));
            x = pool;
        }
    }
    nodes.push(node(
        "Flatten",
        "flatten",
        &[&x],
        "flat",
        vec![attr_int("axis", 1)],
    ));
    let f = net.dense_weight.len() / e.max(1);
    inits.push(f32_tensor("dense.weight", &[e, f], &net.dense_weight));
    inits.push(f32_tensor("dense.bias", &[e], &net.dense_bias));
    let dense_out = if net.arch.l2_normalize {
        "dense"
    } else {
        OUTPUT_NAME
    };
    nodes.push(node(
        "Gemm",
        "dense",
        &["flat", "dense.weight", "dense.bias"],
        dense_out,
        vec![attr_int("transB", 1)],
    ));
    if net.arch.l2_normalize {
        // y / sqrt(sum(y^2) + eps), exactly the trainer's formula (LpNormalization has no eps).
        inits.push(i64_tensor("l2_axes", &[1], &[1]));
        inits.push(f32_tensor("l2_eps", &[], &[net.l2_eps]));
        nodes.push(node(
            "Mul",
            "l2_square",
            &["dense", "dense"],
            "l2_sq",
            vec![],
        ));
        nodes.push(node(
            "ReduceSum",
            "l2_sum",
            &["l2_sq", "l2_axes"],
            "l2_sum",
            vec![attr_int("keepdims", 1)],
        ));
        nodes.push(node(
            "Add",
            "l2_add_eps",
            &["l2_sum", "l2_eps"],
            "l2_sum_eps",
            vec![],
        ));
        nodes.push(node("Sqrt", "l2_sqrt", &["l2_sum_eps"], "l2_norm", vec![]));
        nodes.push(node(
            "Div",
            "l2_div",
            &["dense", "l2_norm"],
            OUTPUT_NAME,
            vec![],
        ));
    }
    let graph = pb::GraphProto {
        name: "edgecp_embedding".into(),
        node: nodes,
        initializer: inits,
        input: vec![value_info(INPUT_NAME, &[None, Some(s), Some(s), Some(3)])],
        output: vec![value_info(OUTPUT_NAME, &[None, Some(e)])],
        doc_string: "edgecp embedding network: raw RGB pixels 0..255 NHWC in, embedding out".into(),
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "edgecp-exporter".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        model_version: 1,
        graph: Some(graph),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| pb::StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

/// The encoded ONNX file of `net`.
pub fn to_onnx_bytes(net: &FoldedNet, metadata: &[(String, String)]) -> Vec<u8> {
    model_proto(net, metadata).encode_to_vec()
}

/// Decodes an ONNX file and checks what this project relies on: a default-domain opset in
/// the supported range, one input and one output with the expected names. `file` names
/// the file in errors.
pub fn check_onnx(bytes: &[u8], file: &str) -> Result<pb::ModelProto, OnnxError> {
    let model = pb::ModelProto::decode(bytes).map_err(|source| OnnxError::Decode {
        file: file.to_string(),
        source,
    })?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| OnnxError::NoOpset {
            file: file.to_string(),
        })?;
    if !(OPSET..=MAX_OPSET).contains(&opset) {
        return Err(OnnxError::Opset {
            file: file.to_string(),
            found: opset,
        });
    }
    let graph = model.graph.as_ref().ok_or_else(|| OnnxError::Graph {
        file: file.to_string(),
        what: "no graph".into(),
    })?;
    let names = |v: &[pb::ValueInfoProto]| v.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
    if names(&graph.input) != [INPUT_NAME] || names(&graph.output) != [OUTPUT_NAME] {
        return Err(OnnxError::Graph {
            file: file.to_string(),
            what: format!(
                "expected one input {INPUT_NAME:?} and one output {OUTPUT_NAME:?}, found inputs {:?} and outputs {:?}",
                names(&graph.input),
                names(&graph.output)
            ),
        });
    }
    Ok(model)
}
