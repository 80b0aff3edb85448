//! Post-training int8 quantisation of the TFLite model, calibrated on images of the
//! calibration split (TFLite's int8 scheme: per-channel symmetric convolution weights,
//! per-tensor symmetric dense weights, int32 biases, per-tensor asymmetric activations).
//!
//! ```text
//! input f32 raw 0..255 -> MUL, ADD (float) -> QUANTIZE (int8, scale 1/255)
//! CONV_2D int8 +RELU x3 with MAX_POOL_2D int8 -> RESHAPE -> FULLY_CONNECTED int8
//! -> DEQUANTIZE -> float L2 normalisation (as in the float model)
//! ```
//! Activation ranges are the min / max the float network reaches on the calibration
//! images (tract runs the float ONNX model with the intermediate outputs exposed).

use anyhow::{Context, Result};
use tract_onnx::prelude::*;
use tract_tflite::tflite::{
    ActivationFunctionType, BuiltinOperator, BuiltinOptions, Conv2DOptions, Conv2DOptionsArgs,
    FullyConnectedOptions, FullyConnectedOptionsArgs, FullyConnectedOptionsWeightsFormat, Padding,
    Pool2DOptions, Pool2DOptionsArgs, ReshapeOptions, ReshapeOptionsArgs, TensorType,
};

use crate::net::FoldedNet;
use crate::tflite::{Quant, Writer};

/// Observed range of one activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

impl Range {
    /// int8 parameters covering the range (and 0, which padding and ReLU need exactly).
    pub fn quant(&self) -> Quant {
        let min = self.min.min(0.0);
        let max = self.max.max(0.0).max(min + 1e-6);
        let scale = (max - min) / 255.0;
        let zp = (-128.0 - min / scale).round().clamp(-128.0, 127.0) as i64;
        Quant::per_tensor(scale, zp)
    }
}

/// Ranges of the convolution outputs (after ReLU) and of the dense output (before L2).
#[derive(Clone, Debug, PartialEq)]
pub struct Ranges {
    pub convs: Vec<Range>,
    pub dense: Range,
}

/// Runs the float ONNX model on `input` (raw NHWC pixels of `n` images) with the ReLU and
/// dense outputs exposed, `batch` images at a time, and records their ranges.
pub fn calibrate(onnx: &[u8], net: &FoldedNet, input: &[f32], batch: usize) -> Result<Ranges> {
    let s = net.arch.side;
    let per = s * s * 3;
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut &onnx[..])?
        .with_input_fact(0, f32::fact([batch, s, s, 3]).into())?;
    let mut names: Vec<String> = (1..=net.convs.len()).map(|i| format!("relu{i}")).collect();
    names.push("dense".into());
    let outlets = names
        .iter()
        .map(|n| Ok(OutletId::new(model.node_by_name(n)?.id, 0)))
        .collect::<TractResult<Vec<_>>>()?;
    model = model.with_output_outlets(&outlets)?;
    let plan = model.into_optimized()?.into_runnable()?;
    let mut ranges = vec![
        Range {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY
        };
        names.len()
    ];
    for chunk in input.chunks(batch * per) {
        let mut x = chunk.to_vec();
        x.resize(batch * per, 0.0);
        let m = chunk.len() / per;
        let t = Tensor::from_shape(&[batch, s, s, 3], &x)?;
        let outs = plan.run(tvec!(t.into()))?;
        for (r, o) in ranges.iter_mut().zip(outs.iter()) {
            let v = o.try_as_plain_ram()?;
            let v = v.as_slice::<f32>()?;
            // only the real images of a padded last chunk
            let used = v.len() / batch * m;
            for &y in &v[..used] {
                r.min = r.min.min(y);
                r.max = r.max.max(y);
            }
        }
    }
    let dense = ranges.pop().context("no dense range")?;
    Ok(Ranges {
        convs: ranges,
        dense,
    })
}

fn quantize_sym(w: &[f32], scale: f32) -> Vec<u8> {
    w.iter()
        .map(|&x| ((x / scale).round().clamp(-127.0, 127.0) as i8) as u8)
        .collect()
}

fn bias_i32(b: &[f32], scales: impl Fn(usize) -> f32) -> Vec<u8> {
    b.iter()
        .enumerate()
        .flat_map(|(c, &x)| ((x / scales(c)).round() as i32).to_le_bytes())
        .collect()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12)
}

/// The int8 `.tflite` bytes of `net` with activation `ranges`.
pub fn to_tflite_int8_bytes(net: &FoldedNet, ranges: &Ranges, description: &str) -> Vec<u8> {
    let mut w = Writer::new();
    w.versions = vec![
        (BuiltinOperator::CONV_2D, 3),
        (BuiltinOperator::FULLY_CONNECTED, 4),
        (BuiltinOperator::MAX_POOL_2D, 2),
        (BuiltinOperator::QUANTIZE, 2),
        (BuiltinOperator::DEQUANTIZE, 2),
    ];
    let s = net.arch.side;
    let e = net.arch.embedding_dim;
    let input = w.activation("input", &[s, s, 3]);
    let scale = w.f32_const("input_scale", &[1], &[net.input_scale]);
    let offset = w.f32_const("input_offset", &[1], &[net.input_offset]);
    let scaled = w.activation("scaled", &[s, s, 3]);
    w.mul(input, scale, scaled);
    let normalized = w.activation("normalized", &[s, s, 3]);
    w.add(scaled, offset, normalized);
    // normalised pixels lie in [-0.5, 0.5]: 1/255 steps are exactly the u8 grid
    let mut q_in = Quant::per_tensor(1.0 / 255.0, 0);
    let mut x = w.activation_q("normalized_q", &[s, s, 3], Some(&q_in));
    w.op(
        BuiltinOperator::QUANTIZE,
        &[normalized],
        &[x],
        BuiltinOptions::NONE,
        None,
    );
    let mut side = s;
    for (i, (c, r)) in net.convs.iter().zip(&ranges.convs).enumerate() {
        let n = i + 1;
        let wt = c.weight_ohwi();
        let per_out = wt.len() / c.out_channels;
        let scales: Vec<f32> = wt.chunks(per_out).map(|ch| max_abs(ch) / 127.0).collect();
        let qw: Vec<u8> = wt
            .chunks(per_out)
            .zip(&scales)
            .flat_map(|(ch, &sc)| quantize_sym(ch, sc))
            .collect();
        let wq = Quant {
            scale: scales.clone(),
            zero_point: vec![0; c.out_channels],
            axis: 0,
        };
        let wt_id = w.tensor(
            &format!("conv{n}/weight_q"),
            &[
                c.out_channels as i32,
                c.kernel as i32,
                c.kernel as i32,
                c.in_channels as i32,
            ],
            None,
            TensorType::INT8,
            Some(&qw),
            Some(&wq),
        );
        let s_in = q_in.scale[0];
        let bq = Quant {
            scale: scales.iter().map(|&sw| s_in * sw).collect(),
            zero_point: vec![0; c.out_channels],
            axis: 0,
        };
        let b_id = w.tensor(
            &format!("conv{n}/bias_q"),
            &[c.out_channels as i32],
            None,
            TensorType::INT32,
            Some(&bias_i32(&c.bias, |ch| s_in * scales[ch])),
            Some(&bq),
        );
        let q_out = r.quant();
        let y = w.activation_q(
            &format!("relu{n}_q"),
            &[side, side, c.out_channels],
            Some(&q_out),
        );
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
            &[x, wt_id, b_id],
            &[y],
            BuiltinOptions::Conv2DOptions,
            Some(o.as_union_value()),
        );
        x = y;
        q_in = q_out;
        if c.pool > 1 {
            side /= c.pool;
            let y = w.activation_q(
                &format!("pool{n}_q"),
                &[side, side, c.out_channels],
                Some(&q_in),
            );
            let p = c.pool as i32;
            let o = Pool2DOptions::create(
                &mut w.fb,
                &Pool2DOptionsArgs {
                    padding: Padding::VALID,
                    stride_w: p,
                    stride_h: p,
                    filter_width: p,
                    filter_height: p,
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
    let flat = w.activation_q("flat_q", &[f], Some(&q_in));
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
    let dw = net.dense_weight_hwc();
    let sw = max_abs(&dw) / 127.0;
    let dw_id = w.tensor(
        "dense/weight_q",
        &[e as i32, f as i32],
        None,
        TensorType::INT8,
        Some(&quantize_sym(&dw, sw)),
        Some(&Quant::per_tensor(sw, 0)),
    );
    let s_in = q_in.scale[0];
    let db_id = w.tensor(
        "dense/bias_q",
        &[e as i32],
        None,
        TensorType::INT32,
        Some(&bias_i32(&net.dense_bias, |_| s_in * sw)),
        Some(&Quant::per_tensor(s_in * sw, 0)),
    );
    let q_dense = ranges.dense.quant();
    let dense_q = w.activation_q("dense_q", &[e], Some(&q_dense));
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
        &[flat, dw_id, db_id],
        &[dense_q],
        BuiltinOptions::FullyConnectedOptions,
        Some(o.as_union_value()),
    );
    let dense = w.activation(
        if net.arch.l2_normalize {
            "dense"
        } else {
            "embedding"
        },
        &[e],
    );
    w.op(
        BuiltinOperator::DEQUANTIZE,
        &[dense_q],
        &[dense],
        BuiltinOptions::NONE,
        None,
    );
    let out = crate::tflite::l2_tail(&mut w, net, dense);
    crate::tflite::finish(w, input, out, description)
}
