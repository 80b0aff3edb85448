//! TFLite writer: the folded network as a float32 `.tflite` flatbuffer.
//!
//! Written with the schema builders tract-tflite generates and exports
//! (`tract_tflite::tflite`, flatbuffers 25), not with tract-tflite's own model writer: that
//! one emits a dense layer as BATCH_MATMUL and ReLU as MAXIMUM, which LiteRT's delegates
//! accelerate poorly. Ops here:
//! ```text
//! input f32 [1, S, S, 3] NHWC raw 0..255 (shape_signature [-1, S, S, 3]: batch dynamic)
//! MUL(1/255) -> ADD(-0.5)
//! CONV_2D 5x5 SAME +RELU -> CONV_2D 3x3 SAME +RELU -> MAX_POOL_2D 2 -> CONV_2D 3x3 SAME +RELU -> MAX_POOL_2D 2
//! RESHAPE [-1, F] -> FULLY_CONNECTED [E]
//! [L2: MUL(y,y) -> SUM(axis 1, keep_dims) -> ADD(1e-12) -> SQRT -> DIV]
//! ```
//! (LiteRT's L2_NORMALIZATION clamps the norm at 1e-6 instead of adding 1e-12, and
//! tract-tflite has no L2_NORMALIZATION: the five plain ops compute the trainer's formula
//! exactly and run everywhere.) The dense weights' columns are permuted to H, W, C order
//! because TFLite flattens NHWC activations.

use flatbuffers::{FlatBufferBuilder, WIPOffset};
use tract_tflite::tflite::{
    ActivationFunctionType, AddOptions, AddOptionsArgs, Buffer, BufferArgs, BuiltinOperator,
    BuiltinOptions, Conv2DOptions, Conv2DOptionsArgs, CustomOptionsFormat, DivOptions,
    DivOptionsArgs, FullyConnectedOptions, FullyConnectedOptionsArgs,
    FullyConnectedOptionsWeightsFormat, Model, ModelArgs, MulOptions, MulOptionsArgs, Operator,
    OperatorArgs, OperatorCode, OperatorCodeArgs, Padding, Pool2DOptions, Pool2DOptionsArgs,
    QuantizationDetails, QuantizationParameters, QuantizationParametersArgs, ReducerOptions,
    ReducerOptionsArgs, ReshapeOptions, ReshapeOptionsArgs, SubGraph, SubGraphArgs, Tensor,
    TensorArgs, TensorType,
};

use crate::net::FoldedNet;

/// TFLite schema version written (the "TFL3" file identifier).
pub const SCHEMA_VERSION: u32 = 3;

/// Why a `.tflite` file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TfliteError {
    #[error("{file}: not a valid TFLite flatbuffer (truncated or corrupt?): {detail}")]
    Decode { file: String, detail: String },
    #[error("{file}: {what}")]
    Model { file: String, what: String },
}

/// Affine quantisation of a tensor: `real = scale * (q - zero_point)`, per tensor (one
/// value) or per channel along `axis`.
#[derive(Clone, Debug, PartialEq)]
pub struct Quant {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    pub axis: i32,
}

impl Quant {
    pub fn per_tensor(scale: f32, zero_point: i64) -> Quant {
        Quant {
            scale: vec![scale],
            zero_point: vec![zero_point],
            axis: 0,
        }
    }
}

pub(crate) struct Writer<'f> {
    pub(crate) fb: FlatBufferBuilder<'f>,
    buffers: Vec<WIPOffset<Buffer<'f>>>,
    tensors: Vec<WIPOffset<Tensor<'f>>>,
    ops: Vec<WIPOffset<Operator<'f>>>,
    codes: Vec<BuiltinOperator>,
    /// Op versions other than 1 (int8 kernels need higher ones).
    pub(crate) versions: Vec<(BuiltinOperator, i32)>,
}

impl<'f> Writer<'f> {
    pub(crate) fn new() -> Self {
        let mut fb = FlatBufferBuilder::new();
        // buffer 0: the empty sentinel that every non-constant tensor points at
        let sentinel = Buffer::create(&mut fb, &BufferArgs { data: None });
        Writer {
            fb,
            buffers: vec![sentinel],
            tensors: vec![],
            ops: vec![],
            codes: vec![],
            versions: vec![],
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn tensor(
        &mut self,
        name: &str,
        shape: &[i32],
        signature: Option<&[i32]>,
        ty: TensorType,
        data: Option<&[u8]>,
        quant: Option<&Quant>,
    ) -> i32 {
        let buffer = match data {
            Some(bytes) => {
                let v = self.fb.create_vector(bytes);
                self.buffers
                    .push(Buffer::create(&mut self.fb, &BufferArgs { data: Some(v) }));
                (self.buffers.len() - 1) as u32
            }
            None => 0,
        };
        let shape = self.fb.create_vector(shape);
        let shape_signature = signature.map(|s| self.fb.create_vector(s));
        let name = self.fb.create_string(name);
        let quantization = quant.map(|q| {
            let scale = self.fb.create_vector(&q.scale);
            let zero_point = self.fb.create_vector(&q.zero_point);
            QuantizationParameters::create(
                &mut self.fb,
                &QuantizationParametersArgs {
                    min: None,
                    max: None,
                    scale: Some(scale),
                    zero_point: Some(zero_point),
                    details_type: QuantizationDetails::NONE,
                    details: None,
                    quantized_dimension: q.axis,
                },
            )
        });
        self.tensors.push(Tensor::create(
            &mut self.fb,
            &TensorArgs {
                shape: Some(shape),
                type_: ty,
                buffer,
                name: Some(name),
                quantization,
                is_variable: false,
                sparsity: None,
                shape_signature,
                has_rank: true,
                variant_tensors: None,
            },
        ));
        (self.tensors.len() - 1) as i32
    }

    pub(crate) fn f32_const(&mut self, name: &str, shape: &[usize], v: &[f32]) -> i32 {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let shape: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
        self.tensor(name, &shape, None, TensorType::FLOAT32, Some(&bytes), None)
    }

    pub(crate) fn i32_const(&mut self, name: &str, v: &[i32]) -> i32 {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensor(
            name,
            &[v.len() as i32],
            None,
            TensorType::INT32,
            Some(&bytes),
            None,
        )
    }

    /// A float32 activation tensor: batch 1 in `shape`, -1 in the signature.
    pub(crate) fn activation(&mut self, name: &str, dims: &[usize]) -> i32 {
        self.activation_q(name, dims, None)
    }

    /// An activation tensor, int8 when `quant` is given.
    pub(crate) fn activation_q(
        &mut self,
        name: &str,
        dims: &[usize],
        quant: Option<&Quant>,
    ) -> i32 {
        let mut shape = vec![1i32];
        shape.extend(dims.iter().map(|&d| d as i32));
        let mut sig = vec![-1i32];
        sig.extend(dims.iter().map(|&d| d as i32));
        let ty = if quant.is_some() {
            TensorType::INT8
        } else {
            TensorType::FLOAT32
        };
        self.tensor(name, &shape, Some(&sig), ty, None, quant)
    }

    pub(crate) fn op(
        &mut self,
        code: BuiltinOperator,
        inputs: &[i32],
        outputs: &[i32],
        options_type: BuiltinOptions,
        options: Option<WIPOffset<flatbuffers::UnionWIPOffset>>,
    ) {
        let opcode_index = match self.codes.iter().position(|c| *c == code) {
            Some(i) => i,
            None => {
                self.codes.push(code);
                self.codes.len() - 1
            }
        } as u32;
        let inputs = self.fb.create_vector(inputs);
        let outputs = self.fb.create_vector(outputs);
        self.ops.push(Operator::create(
            &mut self.fb,
            &OperatorArgs {
                opcode_index,
                inputs: Some(inputs),
                outputs: Some(outputs),
                builtin_options_type: options_type,
                builtin_options: options,
                custom_options: None,
                custom_options_format: CustomOptionsFormat::FLEXBUFFERS,
                mutating_variable_inputs: None,
                intermediates: None,
            },
        ));
    }

    pub(crate) fn mul(&mut self, a: i32, b: i32, out: i32) {
        let o = MulOptions::create(
            &mut self.fb,
            &MulOptionsArgs {
                fused_activation_function: ActivationFunctionType::NONE,
            },
        );
        self.op(
            BuiltinOperator::MUL,
            &[a, b],
            &[out],
            BuiltinOptions::MulOptions,
            Some(o.as_union_value()),
        );
    }

    pub(crate) fn add(&mut self, a: i32, b: i32, out: i32) {
        let o = AddOptions::create(
            &mut self.fb,
            &AddOptionsArgs {
                fused_activation_function: ActivationFunctionType::NONE,
                pot_scale_int16: false,
            },
        );
        self.op(
            BuiltinOperator::ADD,
            &[a, b],
            &[out],
            BuiltinOptions::AddOptions,
            Some(o.as_union_value()),
        );
    }
}

/// The deprecated 8-bit code LiteRT still reads for builtin ops below 127.
fn deprecated_code(code: BuiltinOperator) -> i8 {
    code.0.min(127) as i8
}

/// The `.tflite` bytes of `net` (float32).
pub fn to_tflite_bytes(net: &FoldedNet, description: &str) -> Vec<u8> {
    let mut w = Writer::new();
    let s = net.arch.side;
    let e = net.arch.embedding_dim;
    let input = w.activation("input", &[s, s, 3]);
    let scale = w.f32_const("input_scale", &[1], &[net.input_scale]);
    let offset = w.f32_const("input_offset", &[1], &[net.input_offset]);
    let scaled = w.activation("scaled", &[s, s, 3]);
    w.mul(input, scale, scaled);
    let mut x = w.activation("normalized", &[s, s, 3]);
    w.add(scaled, offset, x);
    let mut side = s;
    for (i, c) in net.convs.iter().enumerate() {
        let n = i + 1;
        let wt = w.f32_const(
            &format!("conv{n}/weight"),
            &[c.out_channels, c.kernel, c.kernel, c.in_channels],
            &c.weight_ohwi(),
        );
        let b = w.f32_const(&format!("conv{n}/bias"), &[c.out_channels], &c.bias);
        let y = w.activation(&format!("relu{n}"), &[side, side, c.out_channels]);
        let o = Conv2DOptions::create(
            &mut w.fb,
            &Conv2DOptionsArgs {
                padding: Padding::SAME,
                stride_w: 1,
                stride_h: 1,
                fused_activation_function: ActivationFunctionType::RELU,
                dilation_w_factor: 1,
                dilation_h_factor: 1,
            },
        );
        w.op(
            BuiltinOperator::CONV_2D,
            &[x, wt, b],
            &[y],
            BuiltinOptions::Conv2DOptions,
            Some(o.as_union_value()),
        );
        x = y;
        if c.pool > 1 {
            side /= c.pool;
            let y = w.activation(&format!("pool{n}"), &[side, side, c.out_channels]);
            let q = c.pool as i32;
            let o = Pool2DOptions::create(
                &mut w.fb,
                &Pool2DOptionsArgs {
                    padding: Padding::VALID,
                    stride_w: q,
                    stride_h: q,
                    filter_width: q,
                    filter_height: q,
                    fused_activation_function: ActivationFunctionType::NONE,
                },
            );
            w.op(
                BuiltinOperator::MAX_POOL_2D,
                &[x],
                &[y],
                BuiltinOptions::Pool2DOptions,
                Some(o.as_union_value()),
            );
            x = y;
        }
    }
    let f = side * side * net.final_channels();
    let shape = w.i32_const("flat_shape", &[-1, f as i32]);
    let flat = w.activation("flat", &[f]);
    let new_shape = w.fb.create_vector(&[-1i32, f as i32]);
    let o = ReshapeOptions::create(
        &mut w.fb,
        &ReshapeOptionsArgs {
            new_shape: Some(new_shape),
        },
    );
    w.op(
        BuiltinOperator::RESHAPE,
        &[x, shape],
        &[flat],
        BuiltinOptions::ReshapeOptions,
        Some(o.as_union_value()),
    );
    let dw = w.f32_const("dense/weight", &[e, f], &net.dense_weight_hwc());
    let db = w.f32_const("dense/bias", &[e], &net.dense_bias);
    let dense = w.activation(
        if net.arch.l2_normalize {
            "dense"
        } else {
            "embedding"
        },
        &[e],
    );
    let o = FullyConnectedOptions::create(
        &mut w.fb,
        &FullyConnectedOptionsArgs {
            fused_activation_function: ActivationFunctionType::NONE,
            weights_format: FullyConnectedOptionsWeightsFormat::DEFAULT,
            keep_num_dims: false,
            asymmetric_quantize_inputs: false,
        },
    );
    w.op(
        BuiltinOperator::FULLY_CONNECTED,
        &[flat, dw, db],
        &[dense],
        BuiltinOptions::FullyConnectedOptions,
        Some(o.as_union_value()),
    );
    let out = l2_tail(&mut w, net, dense);
    finish(w, input, out, description)
}

/// The L2 normalisation after the dense output `dense` (when the arch has it); returns
/// the output tensor.
pub(crate) fn l2_tail(w: &mut Writer<'_>, net: &FoldedNet, dense: i32) -> i32 {
    let e = net.arch.embedding_dim;
    let mut out = dense;
    if net.arch.l2_normalize {
        let sq = w.activation("l2_sq", &[e]);
        w.mul(dense, dense, sq);
        let axes = w.i32_const("l2_axes", &[1]);
        let sum = w.activation("l2_sum", &[1]);
        let o = ReducerOptions::create(&mut w.fb, &ReducerOptionsArgs { keep_dims: true });
        w.op(
            BuiltinOperator::SUM,
            &[sq, axes],
            &[sum],
            BuiltinOptions::ReducerOptions,
            Some(o.as_union_value()),
        );
        let eps = w.f32_const("l2_eps", &[1], &[net.l2_eps]);
        let sum_eps = w.activation("l2_sum_eps", &[1]);
        w.add(sum, eps, sum_eps);
        let norm = w.activation("l2_norm", &[1]);
        w.op(
            BuiltinOperator::SQRT,
            &[sum_eps],
            &[norm],
            BuiltinOptions::NONE,
            None,
        );
        out = w.activation("embedding", &[e]);
        let o = DivOptions::create(
            &mut w.fb,
            &DivOptionsArgs {
                fused_activation_function: ActivationFunctionType::NONE,
            },
        );
        w.op(
            BuiltinOperator::DIV,
            &[dense, norm],
            &[out],
            BuiltinOptions::DivOptions,
            Some(o.as_union_value()),
        );
    }
    out
}

pub(crate) fn finish(mut w: Writer<'_>, input: i32, output: i32, description: &str) -> Vec<u8> {
    let tensors = w.fb.create_vector(&w.tensors);
    let inputs = w.fb.create_vector(&[input]);
    let outputs = w.fb.create_vector(&[output]);
    let operators = w.fb.create_vector(&w.ops);
    let name = w.fb.create_string("main");
    let subgraph = SubGraph::create(
        &mut w.fb,
        &SubGraphArgs {
            tensors: Some(tensors),
            inputs: Some(inputs),
            outputs: Some(outputs),
            operators: Some(operators),
            name: Some(name),
        },
    );
    let codes: Vec<_> = w
        .codes
        .clone()
        .into_iter()
        .map(|code| {
            OperatorCode::create(
                &mut w.fb,
                &OperatorCodeArgs {
                    deprecated_builtin_code: deprecated_code(code),
                    custom_code: None,
                    version: w
                        .versions
                        .iter()
                        .find(|(c, _)| *c == code)
                        .map_or(1, |(_, v)| *v),
                    builtin_code: code,
                },
            )
        })
        .collect();
    let codes = w.fb.create_vector(&codes);
    let subgraphs = w.fb.create_vector(&[subgraph]);
    let buffers = w.fb.create_vector(&w.buffers);
    let description = w.fb.create_string(description);
    let model = Model::create(
        &mut w.fb,
        &ModelArgs {
            version: SCHEMA_VERSION,
            operator_codes: Some(codes),
            subgraphs: Some(subgraphs),
            description: Some(description),
            buffers: Some(buffers),
            metadata_buffer: None,
            metadata: None,
            signature_defs: None,
        },
    );
    w.fb.finish(model, Some("TFL3"));
    w.fb.finished_data().to_vec()
}

/// Checks a `.tflite` file's structure (flatbuffer verifier, identifier, one subgraph
/// with one input and one output). `file` names it in errors.
pub fn check_tflite(bytes: &[u8], file: &str) -> Result<(), TfliteError> {
    if bytes.len() < 8 || &bytes[4..8] != b"TFL3" {
        return Err(TfliteError::Decode {
            file: file.into(),
            detail: "missing the TFL3 file identifier".into(),
        });
    }
    let model = tract_tflite::tflite::root_as_model(bytes).map_err(|e| TfliteError::Decode {
        file: file.into(),
        detail: e.to_string(),
    })?;
    let bad = |what: String| TfliteError::Model {
        file: file.into(),
        what,
    };
    if model.version() != SCHEMA_VERSION {
        return Err(bad(format!(
            "schema version {} (expected {SCHEMA_VERSION})",
            model.version()
        )));
    }
    let graphs = model.subgraphs().ok_or_else(|| bad("no subgraph".into()))?;
    if graphs.len() != 1 {
        return Err(bad(format!("{} subgraphs (expected 1)", graphs.len())));
    }
    let g = graphs.get(0);
    let n_in = g.inputs().map_or(0, |v| v.len());
    let n_out = g.outputs().map_or(0, |v| v.len());
    if n_in != 1 || n_out != 1 {
        return Err(bad(format!(
            "{n_in} inputs and {n_out} outputs (expected 1 and 1)"
        )));
    }
    Ok(())
}
