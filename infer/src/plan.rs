//! Lowering an ONNX graph to the engine's plan: a chain of NHWC convolution blocks, a
//! dense layer and an optional L2 normalisation. The graph must be a chain of the forms
//! the exporter writes (docs/BUNDLE.md); anything else is refused with the node that does
//! not fit, so the agent can say which runtime to use instead.
//!
//! ```text
//! input [N, H, W, C] f32 -> (Mul|Add|Sub|Div by a scalar)* -> Transpose(0,3,1,2)
//!   -> (Mul|Add|Sub|Div by a scalar)* -> (Conv [Relu] [MaxPool] [Relu])+
//!   -> Flatten(1) | Reshape([N|0, -1]) -> Gemm [Relu]
//!   -> [Mul(y,y) ReduceSum(axis 1) Add(eps) Sqrt Div(y, .) | LpNormalization(p 2, axis 1)]
//! ```
//!
//! The engine keeps every activation in NHWC while the graph speaks NCHW after its
//! Transpose: the only place the difference shows is the dense layer, whose input
//! columns are permuted here from (c, h, w) to (h, w, c) order.

use std::collections::HashMap;

use crate::kernels::im2col::{self, ConvShape};
use crate::kernels::pool::PoolShape;
use crate::kernels::winograd::{self, Tile, WinogradShape};
use crate::onnx::{self, DimensionValue, Model, Node, Tensor};

/// Default-domain opsets the lowering understands (ReduceSum takes axes as an input from
/// 13 on; nothing it reads changed up to 21).
pub const MIN_OPSET: i64 = 13;
/// See [`MIN_OPSET`].
pub const MAX_OPSET: i64 = 21;
/// Largest image side, channel count and activation the engine accepts (a model beyond
/// these is refused rather than allocated).
const MAX_SIDE: usize = 8192;
const MAX_CHANNELS: usize = 65_536;
const MAX_ACTIVATION: usize = 1 << 28;

/// How a convolution is computed.
#[derive(Debug)]
pub enum ConvAlgo {
    /// Weights `[k*k*C, O]`.
    Im2col { w: Vec<f32> },
    /// Weights: one `[C, O]` plane per transform point.
    Winograd { u: Vec<f32>, tile: Tile },
}

/// One block: convolution + bias [+ ReLU] [+ max-pool].
#[derive(Debug)]
pub struct ConvBlock {
    pub name: String,
    pub shape: ConvShape,
    pub bias: Vec<f32>,
    pub relu: bool,
    pub pool: Option<PoolShape>,
    pub algo: ConvAlgo,
}

impl ConvBlock {
    /// Output `(h, w, c)` after the pool.
    pub fn out_dims(&self) -> (usize, usize, usize) {
        let (h, w) = (self.shape.out_h(), self.shape.out_w());
        match self.pool {
            Some(p) => (
                p.out(h).unwrap_or(0),
                p.out(w).unwrap_or(0),
                self.shape.out_c,
            ),
            None => (h, w, self.shape.out_c),
        }
    }

    /// Whether the pool is computed inside the Winograd output transform.
    pub fn pool_fused(&self) -> bool {
        matches!(self.algo, ConvAlgo::Winograd { .. })
            && self.pool
                == Some(PoolShape {
                    kernel: 2,
                    stride: 2,
                })
    }

    /// The Winograd geometry (`None` for im2col blocks).
    pub fn winograd_shape(&self) -> Option<WinogradShape> {
        match self.algo {
            ConvAlgo::Winograd { tile, .. } => Some(WinogradShape {
                h: self.shape.in_h,
                w: self.shape.in_w,
                c: self.shape.in_c,
                o: self.shape.out_c,
                tile,
            }),
            ConvAlgo::Im2col { .. } => None,
        }
    }
}

/// The dense layer: `y = x · W + b` with `W` as `[F, E]` in NHWC feature order.
#[derive(Debug)]
pub struct Dense {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub features: usize,
    pub outputs: usize,
    pub relu: bool,
}

/// A lowered model.
#[derive(Debug)]
pub struct Plan {
    pub input_name: String,
    pub output_name: String,
    /// Input image `(h, w, c)`.
    pub input: (usize, usize, usize),
    /// `x * scale + offset` on every input value, before the first convolution.
    pub affine: Vec<(f32, f32)>,
    pub convs: Vec<ConvBlock>,
    pub dense: Dense,
    /// `y / sqrt(sum(y^2) + eps)` on the embedding.
    pub l2_eps: Option<f32>,
}

/// A graph the lowering refuses: the node (or part of the file) and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

fn err<T>(what: impl Into<String>) -> Result<T, PlanError> {
    Err(PlanError(what.into()))
}

fn attr<'a>(n: &'a Node, name: &str) -> Option<&'a onnx::Attribute> {
    n.attribute.iter().find(|a| a.name == name)
}

fn attr_ints(n: &Node, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

fn attr_int(n: &Node, name: &str, default: i64) -> i64 {
    attr(n, name).map_or(default, |a| a.i)
}

fn describe(n: &Node) -> String {
    if n.name.is_empty() {
        format!(
            "node {} ({})",
            n.output.first().map_or("?", |s| s),
            n.op_type
        )
    } else {
        format!("node {:?} ({})", n.name, n.op_type)
    }
}

/// Constants of the graph: initializers and Constant nodes' values.
struct Consts<'a> {
    map: HashMap<&'a str, &'a Tensor>,
}

impl<'a> Consts<'a> {
    fn get(&self, name: &str, n: &Node) -> Result<&'a Tensor, PlanError> {
        self.map
            .get(name)
            .copied()
            .ok_or_else(|| PlanError(format!("{}: input {name:?} is not a constant", describe(n))))
    }

    fn floats(&self, name: &str, n: &Node) -> Result<Vec<f32>, PlanError> {
        self.get(name, n)?
            .floats()
            .map_err(|e| PlanError(format!("{}: {e}", describe(n))))
    }

    fn scalar(&self, name: &str, n: &Node) -> Result<f32, PlanError> {
        let v = self.floats(name, n)?;
        match v.as_slice() {
            [x] => Ok(*x),
            _ => err(format!(
                "{}: expected a scalar constant, {name:?} holds {} values (only scalar normalisation is supported)",
                describe(n),
                v.len()
            )),
        }
    }
}

/// Where the walk over the chain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Input,
    Nchw,
    Convs,
    Flat,
    Dense,
    Normalised,
}

fn usize_dim(d: i64, what: &str, max: usize) -> Result<usize, PlanError> {
    usize::try_from(d)
        .ok()
        .filter(|&v| v >= 1 && v <= max)
        .ok_or_else(|| PlanError(format!("{what} {d} is outside 1..={max}")))
}

/// The input's name and `(h, w, c)`.
fn graph_input(
    g: &onnx::Graph,
    consts: &Consts<'_>,
) -> Result<(String, (usize, usize, usize)), PlanError> {
    let inputs: Vec<_> = g
        .input
        .iter()
        .filter(|i| !consts.map.contains_key(i.name.as_str()))
        .collect();
    let [input] = inputs.as_slice() else {
        return err(format!(
            "the graph must have one input, found {}",
            inputs.len()
        ));
    };
    let tt = input
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| PlanError(format!("input {:?} is not a tensor", input.name)))?;
    if tt.elem_type != onnx::FLOAT {
        return err(format!(
            "input {:?} has element type {}, expected FLOAT (1)",
            input.name, tt.elem_type
        ));
    }
    let dims: Vec<Option<i64>> = tt
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(DimensionValue::Value(v)) => Some(v),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let [_, Some(h), Some(w), Some(c)] = dims.as_slice() else {
        return err(format!(
            "input {:?} must be [N, H, W, C] with fixed H, W and C, found {dims:?}",
            input.name
        ));
    };
    Ok((
        input.name.clone(),
        (
            usize_dim(*h, "input height", MAX_SIDE)?,
            usize_dim(*w, "input width", MAX_SIDE)?,
            usize_dim(*c, "input channels", MAX_CHANNELS)?,
        ),
    ))
}

/// Lowers a decoded model.
pub fn lower(model: &Model) -> Result<Plan, PlanError> {
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| PlanError("the model declares no default-domain opset".into()))?;
    if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
        return err(format!(
            "default-domain opset {opset} is outside the supported range {MIN_OPSET}..={MAX_OPSET}"
        ));
    }
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| PlanError("the model has no graph".into()))?;
    let mut consts = Consts {
        map: g.initializer.iter().map(|t| (t.name.as_str(), t)).collect(),
    };
    for n in &g.node {
        if n.op_type == "Constant" {
            let t = attr(n, "value").and_then(|a| a.t.as_ref()).ok_or_else(|| {
                PlanError(format!(
                    "{}: only a tensor `value` is supported",
                    describe(n)
                ))
            })?;
            let out = n
                .output
                .first()
                .ok_or_else(|| PlanError(format!("{} has no output", describe(n))))?;
            consts.map.insert(out.as_str(), t);
        }
    }
    let (input_name, input) = graph_input(g, &consts)?;
    let output_name = match g.output.as_slice() {
        [o] => o.name.clone(),
        _ => {
            return err(format!(
                "the graph must have one output, found {}",
                g.output.len()
            ))
        }
    };

    let nodes: Vec<&Node> = g.node.iter().filter(|n| n.op_type != "Constant").collect();
    let mut cur = input_name.clone();
    let mut stage = Stage::Input;
    // current activation (h, w, c), NHWC
    let (mut h, mut w, mut c) = input;
    let mut affine = Vec::new();
    let mut convs: Vec<ConvBlock> = Vec::new();
    let mut dense: Option<Dense> = None;
    let mut l2_eps = None;
    let mut i = 0;
    while i < nodes.len() {
        let n = nodes[i];
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            return err(format!(
                "{}: domain {:?} is not supported",
                describe(n),
                n.domain
            ));
        }
        let [out] = n.output.as_slice() else {
            return err(format!("{} must have exactly one output", describe(n)));
        };
        // the data input is the chain's current value
        let data_in = n.input.first().map(String::as_str);
        let takes_cur = data_in == Some(cur.as_str())
            || (matches!(n.op_type.as_str(), "Mul" | "Add") && n.input.get(1) == Some(&cur));
        if !takes_cur {
            return err(format!(
                "{} does not continue the chain from {cur:?} (inputs {:?}): the native engine runs chains only",
                describe(n),
                n.input
            ));
        }
        match (n.op_type.as_str(), stage) {
            ("Mul" | "Add" | "Sub" | "Div", Stage::Input | Stage::Nchw)
                if n.input.len() == 2 && n.input[0] != n.input[1] =>
            {
                let (other, cur_first) = if n.input[0] == cur {
                    (&n.input[1], true)
                } else {
                    (&n.input[0], false)
                };
                let k = consts.scalar(other, n)?;
                affine.push(match (n.op_type.as_str(), cur_first) {
                    ("Mul", _) => (k, 0.0),
                    ("Add", _) => (1.0, k),
                    ("Sub", true) => (1.0, -k),
                    ("Div", true) if k != 0.0 => (1.0 / k, 0.0),
                    _ => {
                        return err(format!(
                            "{}: only x*k, x+k, x-k and x/k (k != 0) are supported before the convolutions",
                            describe(n)
                        ))
                    }
                });
                // x/k is computed as x*(1/k): exact for powers of two, one rounding otherwise
            }
            ("Transpose", Stage::Input) => {
                if attr_ints(n, "perm").as_deref() != Some(&[0, 3, 1, 2]) {
                    return err(format!("{}: only perm [0, 3, 1, 2] (NHWC -> NCHW) is supported", describe(n)));
                }
                stage = Stage::Nchw;
            }
            ("Conv", Stage::Nchw | Stage::Convs) => {
                let block = conv_block(n, &consts, (h, w, c))?;
                (h, w, c) = block.out_dims();
                convs.push(block);
                stage = Stage::Convs;
            }
            ("Relu", Stage::Convs) => {
                if let Some(b) = convs.last_mut() {
                    // ReLU and max commute, so a ReLU after the pool is the same block
                    if b.relu {
                        return err(format!("{}: a second ReLU on one block", describe(n)));
                    }
                    b.relu = true;
                }
            }
            ("MaxPool", Stage::Convs) => {
                let p = pool_shape(n)?;
                let Some(b) = convs.last_mut() else {
                    return err(format!("{}: a pool before any convolution", describe(n)));
                };
                if b.pool.is_some() {
                    return err(format!("{}: a second pool on one block", describe(n)));
                }
                let (Some(ph), Some(pw)) = (p.out(h), p.out(w)) else {
                    return err(format!("{}: window {} does not fit a {h}x{w} input", describe(n), p.kernel));
                };
                b.pool = Some(p);
                (h, w) = (ph, pw);
            }
            ("Flatten", Stage::Convs) => {
                if attr_int(n, "axis", 1) != 1 {
                    return err(format!("{}: only axis 1 is supported", describe(n)));
                }
                stage = Stage::Flat;
            }
            ("Reshape", Stage::Convs) => {
                let shape = n
                    .input
                    .get(1)
                    .ok_or_else(|| PlanError(format!("{} has no shape input", describe(n))))?;
                let s = consts
                    .get(shape, n)?
                    .ints()
                    .map_err(|e| PlanError(format!("{}: {e}", describe(n))))?;
                let f = (h * w * c) as i64;
                if !matches!(s.as_slice(), [0 | -1, x] if *x == -1 || *x == f) {
                    return err(format!("{}: only a reshape to [N, -1] is supported, found {s:?}", describe(n)));
                }
                stage = Stage::Flat;
            }
            ("Gemm", Stage::Flat) => {
                dense = Some(dense_layer(n, &consts, (h, w, c))?);
                stage = Stage::Dense;
            }
            ("Relu", Stage::Dense) => {
                if let Some(d) = dense.as_mut() {
                    d.relu = true;
                }
            }
            ("LpNormalization", Stage::Dense) => {
                if attr_int(n, "p", 2) != 2 || !matches!(attr_int(n, "axis", -1), 1 | -1) {
                    return err(format!("{}: only p = 2 over axis 1 is supported", describe(n)));
                }
                l2_eps = Some(0.0);
                stage = Stage::Normalised;
            }
            ("Mul", Stage::Dense) if n.input.len() == 2 && n.input[0] == n.input[1] => {
                let eps = l2_pattern(&nodes[i..], &consts, &cur)?;
                l2_eps = Some(eps);
                stage = Stage::Normalised;
                i += 4;
                cur = nodes[i].output[0].clone();
                i += 1;
                continue;
            }
            _ => {
                return err(format!(
                    "{} is not supported at this point of the chain (after {stage:?}) by the native engine",
                    describe(n)
                ))
            }
        }
        cur = out.clone();
        i += 1;
    }
    let Some(dense) = dense else {
        return err("the graph has no dense (Gemm) layer after its convolutions");
    };
    if cur != output_name {
        return err(format!(
            "the chain ends at {cur:?}, but the graph's output is {output_name:?}"
        ));
    }
    Ok(Plan {
        input_name,
        output_name,
        input,
        affine,
        convs,
        dense,
        l2_eps,
    })
}

/// `Mul(y, y) -> ReduceSum(axis 1, keepdims) -> Add(eps) -> Sqrt -> Div(y, norm)`: the
/// exporter's L2 normalisation (LpNormalization has no epsilon). Returns eps.
fn l2_pattern(nodes: &[&Node], consts: &Consts<'_>, y: &str) -> Result<f32, PlanError> {
    let bad = |n: &Node, what: &str| {
        PlanError(format!(
            "{}: expected {what} (the L2 normalisation y / sqrt(sum(y^2) + eps))",
            describe(n)
        ))
    };
    let [sq, sum, add, sqrt, div, ..] = nodes else {
        return err("the graph ends inside an L2 normalisation");
    };
    let out = |n: &Node| n.output.first().cloned().unwrap_or_default();
    if sum.op_type != "ReduceSum" || sum.input.first() != Some(&out(sq)) {
        return Err(bad(sum, "ReduceSum of the squares"));
    }
    let axes = match sum.input.get(1) {
        Some(a) => consts
            .get(a, sum)?
            .ints()
            .map_err(|e| PlanError(format!("{}: {e}", describe(sum))))?,
        None => attr_ints(sum, "axes").unwrap_or_default(),
    };
    if !matches!(axes.as_slice(), [1] | [-1]) || attr_int(sum, "keepdims", 1) != 1 {
        return Err(bad(sum, "ReduceSum over axis 1 with keepdims = 1"));
    }
    let sum_out = out(sum);
    if add.op_type != "Add" || !add.input.contains(&sum_out) || add.input.len() != 2 {
        return Err(bad(add, "Add(sum, eps)"));
    }
    let eps_name = if add.input[0] == sum_out {
        &add.input[1]
    } else {
        &add.input[0]
    };
    let eps = consts.scalar(eps_name, add)?;
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(bad(add, "a finite eps >= 0"));
    }
    if sqrt.op_type != "Sqrt" || sqrt.input.first() != Some(&out(add)) {
        return Err(bad(sqrt, "Sqrt of the sum"));
    }
    if div.op_type != "Div" || div.input.as_slice() != [y.to_string(), out(sqrt)] {
        return Err(bad(div, "Div(y, norm)"));
    }
    if [sq, sum, add, sqrt, div]
        .iter()
        .any(|n| n.output.len() != 1)
    {
        return err("a node of the L2 normalisation has more than one output");
    }
    Ok(eps)
}

fn pool_shape(n: &Node) -> Result<PoolShape, PlanError> {
    let k = attr_ints(n, "kernel_shape").unwrap_or_default();
    let s = attr_ints(n, "strides").unwrap_or_else(|| vec![1, 1]);
    let pads = attr_ints(n, "pads").unwrap_or_else(|| vec![0; 4]);
    let dil = attr_ints(n, "dilations").unwrap_or_else(|| vec![1, 1]);
    let auto = attr(n, "auto_pad")
        .map(|a| a.s.as_slice())
        .unwrap_or(b"NOTSET");
    let ok = matches!(k.as_slice(), [a, b] if a == b && *a >= 1 && *a <= 64)
        && matches!(s.as_slice(), [a, b] if a == b && *a >= 1 && *a <= 64)
        && pads.iter().all(|&p| p == 0)
        && dil.iter().all(|&d| d == 1)
        && attr_int(n, "ceil_mode", 0) == 0
        && attr_int(n, "storage_order", 0) == 0
        && matches!(auto, b"NOTSET" | b"VALID" | b"");
    if !ok {
        return err(format!(
            "{}: only square windows and strides without padding, dilation or ceil mode are supported (kernel {k:?}, strides {s:?}, pads {pads:?})",
            describe(n)
        ));
    }
    Ok(PoolShape {
        kernel: k[0] as usize,
        stride: s[0] as usize,
    })
}

fn conv_block(
    n: &Node,
    consts: &Consts<'_>,
    (h, w, c): (usize, usize, usize),
) -> Result<ConvBlock, PlanError> {
    let wname = n
        .input
        .get(1)
        .ok_or_else(|| PlanError(format!("{} has no weight input", describe(n))))?;
    let wt = consts.get(wname, n)?;
    let dims: Vec<usize> = wt
        .dims
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(0))
        .collect();
    let [o, wc, kh, kw] = dims.as_slice() else {
        return err(format!(
            "{}: weight {wname:?} must be [O, C, k, k], found {:?}",
            describe(n),
            wt.dims
        ));
    };
    let (o, k) = (*o, *kh);
    if *wc != c || kh != kw || k == 0 || o == 0 || o > MAX_CHANNELS || k > 64 {
        return err(format!(
            "{}: weight {wname:?} has shape {:?}, expected [O, {c}, k, k] (square kernel) for an input of {c} channels",
            describe(n),
            wt.dims
        ));
    }
    let weights = consts.floats(wname, n)?;
    let bias = match n.input.get(2).filter(|s| !s.is_empty()) {
        Some(b) => {
            let v = consts.floats(b, n)?;
            if v.len() != o {
                return err(format!(
                    "{}: bias {b:?} has {} values, expected {o}",
                    describe(n),
                    v.len()
                ));
            }
            v
        }
        None => vec![0.0; o],
    };
    let strides = attr_ints(n, "strides").unwrap_or_else(|| vec![1, 1]);
    let pads = attr_ints(n, "pads").unwrap_or_else(|| vec![0; 4]);
    let dil = attr_ints(n, "dilations").unwrap_or_else(|| vec![1, 1]);
    let auto = attr(n, "auto_pad")
        .map(|a| a.s.as_slice())
        .unwrap_or(b"NOTSET");
    let group = attr_int(n, "group", 1);
    if let Some(ks) = attr_ints(n, "kernel_shape") {
        if ks != [k as i64, k as i64] {
            return err(format!(
                "{}: kernel_shape {ks:?} does not match the weights",
                describe(n)
            ));
        }
    }
    let stride = match strides.as_slice() {
        [a, b] if a == b && *a >= 1 && *a <= 64 => *a as usize,
        _ => {
            return err(format!(
                "{}: strides {strides:?}: only equal strides are supported",
                describe(n)
            ))
        }
    };
    let pad = match pads.as_slice() {
        [a, b, cc, d] if a == b && b == cc && cc == d && *a >= 0 && (*a as usize) < k => {
            *a as usize
        }
        _ => {
            return err(format!(
                "{}: pads {pads:?}: only equal padding smaller than the kernel is supported",
                describe(n)
            ))
        }
    };
    if group != 1 || dil.iter().any(|&d| d != 1) || !matches!(auto, b"NOTSET" | b"") {
        return err(format!(
            "{}: group {group}, dilations {dil:?}, auto_pad {:?}: only group 1, dilation 1 and explicit pads are supported",
            describe(n),
            String::from_utf8_lossy(auto)
        ));
    }
    if h + 2 * pad < k || w + 2 * pad < k {
        return err(format!(
            "{}: a {k}x{k} kernel does not fit a {h}x{w} input",
            describe(n)
        ));
    }
    let shape = ConvShape {
        in_h: h,
        in_w: w,
        in_c: c,
        out_c: o,
        kernel: k,
        stride,
        pad,
    };
    let act = shape
        .out_h()
        .checked_mul(shape.out_w())
        .and_then(|v| v.checked_mul(o));
    if act.is_none_or(|a| a > MAX_ACTIVATION) {
        return err(format!(
            "{}: output of {}x{}x{o} is too large",
            describe(n),
            shape.out_h(),
            shape.out_w()
        ));
    }
    let tile = (k == 3 && stride == 1 && pad == 1)
        .then(|| Tile::choose(h, w))
        .flatten();
    let algo = match tile {
        Some(tile) => ConvAlgo::Winograd {
            u: winograd::pack_weights(tile, c, o, &weights),
            tile,
        },
        None => ConvAlgo::Im2col {
            w: im2col::pack_weights(&shape, &weights),
        },
    };
    Ok(ConvBlock {
        name: if n.name.is_empty() {
            n.output[0].clone()
        } else {
            n.name.clone()
        },
        shape,
        bias,
        relu: false,
        pool: None,
        algo,
    })
}

fn dense_layer(
    n: &Node,
    consts: &Consts<'_>,
    (h, w, c): (usize, usize, usize),
) -> Result<Dense, PlanError> {
    let f = h * w * c;
    let alpha = attr(n, "alpha").map_or(1.0, |a| a.f);
    let beta = attr(n, "beta").map_or(1.0, |a| a.f);
    if attr_int(n, "transA", 0) != 0 || alpha != 1.0 || beta != 1.0 {
        return err(format!(
            "{}: only transA = 0, alpha = beta = 1 are supported",
            describe(n)
        ));
    }
    let trans_b = attr_int(n, "transB", 0) != 0;
    let wname = n
        .input
        .get(1)
        .ok_or_else(|| PlanError(format!("{} has no weight input", describe(n))))?;
    let wt = consts.get(wname, n)?;
    let dims: Vec<i64> = wt.dims.clone();
    let e = match (dims.as_slice(), trans_b) {
        ([e, ff], true) if *ff == f as i64 && *e >= 1 => *e as usize,
        ([ff, e], false) if *ff == f as i64 && *e >= 1 => *e as usize,
        _ => {
            return err(format!(
                "{}: weight {wname:?} has shape {dims:?}, expected {} for {f} input features",
                describe(n),
                if trans_b {
                    format!("[E, {f}]")
                } else {
                    format!("[{f}, E]")
                }
            ))
        }
    };
    let raw = consts.floats(wname, n)?;
    let b = match n.input.get(2).filter(|s| !s.is_empty()) {
        Some(name) => {
            let v = consts.floats(name, n)?;
            if v.len() != e {
                return err(format!(
                    "{}: bias {name:?} has {} values, expected {e}",
                    describe(n),
                    v.len()
                ));
            }
            v
        }
        None => vec![0.0; e],
    };
    // graph feature index (c, y, x) in NCHW order -> engine index (y, x, c)
    let mut wm = vec![0.0f32; f * e];
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let src_f = (ch * h + y) * w + x;
                let dst_f = (y * w + x) * c + ch;
                for j in 0..e {
                    let v = if trans_b {
                        raw[j * f + src_f]
                    } else {
                        raw[src_f * e + j]
                    };
                    wm[dst_f * e + j] = v;
                }
            }
        }
    }
    Ok(Dense {
        w: wm,
        b,
        features: f,
        outputs: e,
        relu: false,
    })
}
