//! The engine against tract-onnx on the same ONNX bytes: networks of the exporter's form
//! and variations on it (sizes that pick each convolution algorithm, strides, other pools,
//! no L2, Gemm without transB), at batch sizes that exercise both parallel modes.
//! Also: every graph the engine cannot run is refused with the node's name, and random
//! corruption of a model file never panics.

use infer::onnx::{self, Attribute, Dimension, DimensionValue, Graph, Model, Node};
use infer::{Engine, EngineError, Options};
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One convolution block of a test network.
#[derive(Clone, Copy)]
struct Block {
    out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    /// (kernel, stride) of a max-pool after the ReLU.
    pool: Option<(usize, usize)>,
}

const fn block(out: usize, k: usize, pool: Option<(usize, usize)>) -> Block {
    Block {
        out,
        k,
        stride: 1,
        pad: k / 2,
        pool,
    }
}

struct Net {
    side: usize,
    blocks: Vec<Block>,
    embedding: usize,
    l2: bool,
    trans_b: bool,
}

fn ints(name: &str, v: &[i64]) -> Attribute {
    Attribute {
        name: name.into(),
        ints: v.to_vec(),
        r#type: 7,
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> Attribute {
    Attribute {
        name: name.into(),
        i: v,
        r#type: 2,
        ..Default::default()
    }
}

fn f32s(name: &str, dims: &[usize], v: &[f32]) -> onnx::Tensor {
    onnx::Tensor {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: onnx::FLOAT,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], out: &str, attribute: Vec<Attribute>) -> Node {
    Node {
        op_type: op.into(),
        name: out.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        attribute,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Option<usize>]) -> onnx::ValueInfo {
    onnx::ValueInfo {
        name: name.into(),
        r#type: Some(onnx::TypeProto {
            tensor_type: Some(onnx::TensorType {
                elem_type: onnx::FLOAT,
                shape: Some(onnx::Shape {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Some(v) => DimensionValue::Value(*v as i64),
                                None => DimensionValue::Param("N".into()),
                            }),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

/// The network as the exporter writes it (random weights); returns the model.
fn build(net: &Net, rng: &mut ChaCha8Rng) -> Model {
    let mut nodes = vec![
        node("Mul", &["input", "scale"], "scaled", vec![]),
        node("Add", &["scaled", "offset"], "normalized", vec![]),
        node(
            "Transpose",
            &["normalized"],
            "nchw",
            vec![ints("perm", &[0, 3, 1, 2])],
        ),
    ];
    let mut inits = vec![
        f32s("scale", &[], &[1.0 / 255.0]),
        f32s("offset", &[], &[-0.5]),
    ];
    let (mut h, mut c) = (net.side, 3);
    let mut x = "nchw".to_string();
    for (i, b) in net.blocks.iter().enumerate() {
        let fan_in = (c * b.k * b.k) as f32;
        let w: Vec<f32> = (0..b.out * c * b.k * b.k)
            .map(|_| rng.random_range(-1.0..1.0) * (3.0 / fan_in).sqrt())
            .collect();
        let bias: Vec<f32> = (0..b.out).map(|_| rng.random_range(-0.1..0.1)).collect();
        let (wn, bn) = (format!("w{i}"), format!("b{i}"));
        inits.push(f32s(&wn, &[b.out, c, b.k, b.k], &w));
        inits.push(f32s(&bn, &[b.out], &bias));
        let conv = format!("conv{i}");
        let p = b.pad as i64;
        nodes.push(node(
            "Conv",
            &[&x, &wn, &bn],
            &conv,
            vec![
                ints("kernel_shape", &[b.k as i64, b.k as i64]),
                ints("pads", &[p, p, p, p]),
                ints("strides", &[b.stride as i64, b.stride as i64]),
            ],
        ));
        let relu = format!("relu{i}");
        nodes.push(node("Relu", &[&conv], &relu, vec![]));
        x = relu;
        h = (h + 2 * b.pad - b.k) / b.stride + 1;
        if let Some((k, s)) = b.pool {
            let pool = format!("pool{i}");
            nodes.push(node(
                "MaxPool",
                &[&x],
                &pool,
                vec![
                    ints("kernel_shape", &[k as i64, k as i64]),
                    ints("strides", &[s as i64, s as i64]),
                ],
            ));
            x = pool;
            h = (h - k) / s + 1;
        }
        c = b.out;
    }
    nodes.push(node("Flatten", &[&x], "flat", vec![int("axis", 1)]));
    let f = h * h * c;
    let e = net.embedding;
    let dw: Vec<f32> = (0..e * f)
        .map(|_| rng.random_range(-1.0..1.0) * (3.0 / f as f32).sqrt())
        .collect();
    let db: Vec<f32> = (0..e).map(|_| rng.random_range(-0.1..0.1)).collect();
    if net.trans_b {
        inits.push(f32s("dw", &[e, f], &dw));
    } else {
        inits.push(f32s("dw", &[f, e], &dw));
    }
    inits.push(f32s("db", &[e], &db));
    let dense_out = if net.l2 { "dense" } else { "embedding" };
    nodes.push(node(
        "Gemm",
        &["flat", "dw", "db"],
        dense_out,
        vec![int("transB", i64::from(net.trans_b))],
    ));
    if net.l2 {
        inits.push(onnx::Tensor {
            name: "axes".into(),
            dims: vec![1],
            data_type: onnx::INT64,
            raw_data: 1i64.to_le_bytes().to_vec(),
            ..Default::default()
        });
        inits.push(f32s("eps", &[], &[1e-12]));
        nodes.push(node("Mul", &["dense", "dense"], "sq", vec![]));
        nodes.push(node(
            "ReduceSum",
            &["sq", "axes"],
            "sum",
            vec![int("keepdims", 1)],
        ));
        nodes.push(node("Add", &["sum", "eps"], "sum_eps", vec![]));
        nodes.push(node("Sqrt", &["sum_eps"], "norm", vec![]));
        nodes.push(node("Div", &["dense", "norm"], "embedding", vec![]));
    }
    Model {
        ir_version: 8,
        opset_import: vec![onnx::OperatorSetId {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(Graph {
            name: "test".into(),
            node: nodes,
            initializer: inits,
            input: vec![value_info(
                "input",
                &[None, Some(net.side), Some(net.side), Some(3)],
            )],
            output: vec![value_info("embedding", &[None, Some(e)])],
        }),
    }
}

/// A name for one (model, input) case: FNV-1a over the model bytes and the input bits.
fn case_key(bytes: &[u8], x: &[f32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let words = x.iter().flat_map(|v| v.to_bits().to_le_bytes());
    for b in bytes.iter().copied().chain(words) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}.f32")
}

/// tract's output for the case, and with `EDGECP_PARITY_WRITE=DIR` also saved as a
/// fixture for the device targets (cross/test.sh writes them on x86 first).
#[cfg(any(not(edgecp_cross), edgecp_tract))]
fn tract_embed(bytes: &[u8], side: usize, x: &[f32]) -> Vec<f32> {
    let y = tract_run(bytes, side, x);
    if let Ok(dir) = std::env::var("EDGECP_PARITY_WRITE") {
        let path = std::path::Path::new(&dir).join(case_key(bytes, x));
        let raw: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::create_dir_all(&dir).expect("fixture folder");
        std::fs::write(&path, raw).expect("write a fixture");
    }
    y
}

/// On a device target without tract: tract's output for the case as x86 computed it
/// (`EDGECP_PARITY_FIXTURES=DIR`, written by the same test on x86 with
/// `EDGECP_PARITY_WRITE=DIR`). Models and inputs come from seeded generators, so both
/// sides build the same cases.
#[cfg(all(edgecp_cross, not(edgecp_tract)))]
fn tract_embed(bytes: &[u8], _side: usize, x: &[f32]) -> Vec<f32> {
    let dir = std::env::var("EDGECP_PARITY_FIXTURES").expect(
        "EDGECP_PARITY_FIXTURES: the folder of tract's x86 outputs (cross/test.sh writes it)",
    );
    let path = std::path::Path::new(&dir).join(case_key(bytes, x));
    let raw = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "no x86 tract output for this case at {}: {e}",
            path.display()
        )
    });
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(any(not(edgecp_cross), edgecp_tract))]
fn tract_run(bytes: &[u8], side: usize, x: &[f32]) -> Vec<f32> {
    use tract_onnx::prelude::*;
    let n = x.len() / (side * side * 3);
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .and_then(|m| m.with_input_fact(0, f32::fact([n, side, side, 3]).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .expect("tract loads the test model");
    let t = tract_onnx::prelude::Tensor::from_shape(&[n, side, side, 3], x).expect("input tensor");
    let y = plan.run(tvec!(t.into())).expect("tract runs");
    y[0].try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec))
        .expect("f32 output")
}

fn pixels(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| f32::from(rng.random::<u8>())).collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn matches_tract_on_networks_of_every_shape() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let exporter_blocks = vec![
        block(32, 5, None),
        block(64, 3, Some((2, 2))),
        block(64, 3, Some((2, 2))),
    ];
    let nets = [
        // the exporter's network at the default side: F(4x4) conv2, F(2x2) conv3
        Net {
            side: 32,
            blocks: exporter_blocks.clone(),
            embedding: 128,
            l2: true,
            trans_b: true,
        },
        // side 24: conv2 has too few 4x4 blocks for F(4x4); no L2; Gemm without transB
        Net {
            side: 24,
            blocks: exporter_blocks.clone(),
            embedding: 16,
            l2: false,
            trans_b: false,
        },
        // side 20: conv3 on 10x10 (F(2x2)); side 36: conv3 on 9x9 (im2col + separate pool)
        Net {
            side: 20,
            blocks: exporter_blocks.clone(),
            embedding: 8,
            l2: true,
            trans_b: true,
        },
        Net {
            side: 36,
            blocks: exporter_blocks,
            embedding: 24,
            l2: true,
            trans_b: true,
        },
        // strides, a 3x3/3 pool, a Winograd block without pool, odd channel counts
        Net {
            side: 30,
            blocks: vec![
                Block {
                    out: 7,
                    k: 3,
                    stride: 2,
                    pad: 1,
                    pool: None,
                },
                block(9, 3, None),
                block(10, 3, Some((3, 3))),
            ],
            embedding: 5,
            l2: false,
            trans_b: true,
        },
    ];
    for (i, net) in nets.iter().enumerate() {
        let bytes = build(net, &mut rng).encode_to_vec();
        // small batches: 2 threads split every layer (units shared with a helper), 3 none
        for (threads, split_work) in [(1, None), (2, Some(0)), (3, Some(u64::MAX))] {
            let engine = Engine::from_onnx(&bytes, "test.onnx", Options { threads })
                .expect("engine loads")
                .with_split_work(split_work);
            assert_eq!(engine.embedding_dim(), net.embedding);
            for n in [1, 2, 5] {
                let x = pixels(&mut rng, n * net.side * net.side * 3);
                let want = tract_embed(&bytes, net.side, &x);
                let got = engine.embed(&x).expect("engine runs");
                let d = max_abs(&got, &want);
                let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                assert!(
                    d <= 1e-5 * scale.max(1.0),
                    "net {i} threads {threads} batch {n}: max |diff| {d} (scale {scale}); blocks {:?}",
                    engine.describe()
                );
            }
        }
    }
}

#[test]
fn the_exporter_network_uses_the_fast_kernels() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let net = exporter_net(128);
    let e = Engine::from_onnx(
        &build(&net, &mut rng).encode_to_vec(),
        "m",
        Options::default(),
    )
    .unwrap();
    let d = e.describe();
    assert!(d[0].contains("im2col"), "{d:?}");
    assert!(
        d[1].contains("F(4x4,3x3)") && d[1].contains("maxpool 2/2"),
        "{d:?}"
    );
    assert!(d[2].contains("F(2x2,3x3)"), "{d:?}");
    assert!(
        d[3].contains("dense 4096 -> 128") && d[3].contains("L2"),
        "{d:?}"
    );
    // input checks
    assert!(matches!(e.embed(&[]), Err(EngineError::InputSize { .. })));
    assert!(matches!(
        e.embed(&[0.0; 3073]),
        Err(EngineError::InputSize { got: 3073, .. })
    ));
}

/// The exporter's network at side 32 with an L2-normalised embedding of `embedding`.
fn exporter_net(embedding: usize) -> Net {
    Net {
        side: 32,
        blocks: vec![
            block(32, 5, None),
            block(64, 3, Some((2, 2))),
            block(64, 3, Some((2, 2))),
        ],
        embedding,
        l2: true,
        trans_b: true,
    }
}

fn small_net() -> Net {
    Net {
        side: 8,
        blocks: vec![block(4, 3, Some((2, 2)))],
        embedding: 3,
        l2: true,
        trans_b: true,
    }
}

fn refused(model: &Model) -> String {
    match Engine::from_onnx(&model.encode_to_vec(), "bad.onnx", Options::default()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("the engine accepted a graph it should refuse"),
    }
}

#[test]
fn graphs_it_cannot_run_are_refused_by_name() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let good = build(&small_net(), &mut rng);
    fn graph(m: &mut Model) -> &mut Graph {
        m.graph.as_mut().expect("a graph")
    }

    let mut m = good.clone();
    graph(&mut m).node[3].attribute.push(int("group", 2));
    let e = refused(&m);
    assert!(
        e.contains("bad.onnx") && e.contains("\"conv0\"") && e.contains("group 2"),
        "{e}"
    );

    let mut m = good.clone();
    graph(&mut m).node[3]
        .attribute
        .push(ints("dilations", &[2, 2]));
    assert!(refused(&m).contains("dilation"));

    let mut m = good.clone();
    graph(&mut m).node[4].op_type = "Sigmoid".into();
    let e = refused(&m);
    assert!(e.contains("Sigmoid") && e.contains("not supported"), "{e}");

    let mut m = good.clone();
    m.opset_import[0].version = 9;
    assert!(refused(&m).contains("opset 9"));

    let mut m = good.clone();
    graph(&mut m).initializer.retain(|t| t.name != "w0");
    assert!(refused(&m).contains("\"w0\" is not a constant"));

    // weights whose data does not match their dims
    let mut m = good.clone();
    let w = graph(&mut m)
        .initializer
        .iter_mut()
        .find(|t| t.name == "w0")
        .unwrap();
    w.raw_data.truncate(w.raw_data.len() - 4);
    let e = refused(&m);
    assert!(e.contains("\"w0\"") && e.contains("bytes"), "{e}");

    // a graph that branches
    let mut m = good.clone();
    graph(&mut m).node[4].input[0] = "scaled".into();
    assert!(refused(&m).contains("does not continue the chain"));

    // NCHW input
    let mut m = good.clone();
    graph(&mut m).input[0] = value_info("input", &[None, Some(3), Some(8), Some(8)]);
    graph(&mut m).node.remove(2);
    assert!(!refused(&m).is_empty());

    // the L2 pattern with another axis
    let mut m = good;
    let axes = graph(&mut m)
        .initializer
        .iter_mut()
        .find(|t| t.name == "axes")
        .unwrap();
    axes.raw_data = 0i64.to_le_bytes().to_vec();
    assert!(refused(&m).contains("axis 1"));

    // not a protobuf at all
    let e = Engine::from_onnx(
        b"\xff\xff\xff\xff not onnx",
        "junk.onnx",
        Options::default(),
    )
    .unwrap_err();
    assert!(
        matches!(e, EngineError::Decode { .. }) && e.to_string().contains("junk.onnx"),
        "{e}"
    );
}

/// Random byte flips, truncations and insertions of a valid model: every outcome is a
/// loaded engine or an error, never a panic, a hang or a huge allocation.
#[test]
fn corrupted_models_never_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let bytes = build(&small_net(), &mut rng).encode_to_vec();
    let side = 8;
    let (mut loaded, mut refused) = (0, 0);
    for i in 0..3000 {
        let mut b = bytes.clone();
        match i % 3 {
            0 => {
                for _ in 0..rng.random_range(1..8) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
            }
            1 => b.truncate(rng.random_range(0..b.len())),
            _ => {
                let at = rng.random_range(0..b.len());
                let extra: Vec<u8> = (0..rng.random_range(1..16)).map(|_| rng.random()).collect();
                b.splice(at..at, extra);
            }
        }
        match Engine::from_onnx(&b, "fuzz.onnx", Options { threads: 1 }) {
            Ok(e) => {
                loaded += 1;
                let (h, w, c) = e.input_dims();
                if h * w * c <= 4 * side * side * 3 {
                    let y = e
                        .embed(&vec![1.0; h * w * c])
                        .expect("a loaded engine runs");
                    assert_eq!(y.len(), e.embedding_dim());
                }
            }
            Err(e) => {
                refused += 1;
                assert!(e.to_string().contains("fuzz.onnx"), "{e}");
            }
        }
    }
    assert!(
        refused > 1000,
        "only {refused} of 3000 corrupted files were refused"
    );
    eprintln!("corrupted models: {loaded} loaded (changes in weights), {refused} refused");
}

/// Many callers at once (as an HTTP service calls it): every answer equals the one a
/// single caller gets, in both parallel modes (batch 1 splits layers, batch 4 images).
#[test]
fn concurrent_callers_get_the_same_answers() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let net = exporter_net(16);
    let engine = Engine::from_onnx(
        &build(&net, &mut rng).encode_to_vec(),
        "m",
        Options { threads: 2 },
    )
    .unwrap()
    // every layer of a batch of 1 split: callers beyond the 2 slots queue in the pool
    .with_split_work(Some(0));
    let inputs: Vec<Vec<f32>> = (0..8)
        .map(|i| pixels(&mut rng, (1 + (i % 2) * 3) * 32 * 32 * 3))
        .collect();
    let want: Vec<Vec<f32>> = inputs.iter().map(|x| engine.embed(x).unwrap()).collect();
    std::thread::scope(|s| {
        for t in 0..6 {
            let (engine, inputs, want) = (&engine, &inputs, &want);
            s.spawn(move || {
                for k in 0..40 {
                    let i = (t + k) % inputs.len();
                    assert_eq!(
                        engine.embed(&inputs[i]).unwrap(),
                        want[i],
                        "caller {t}, call {k}"
                    );
                }
            });
        }
    });
}

/// Writes the exporter's network (side 32, embedding 128, random weights: the
/// GTSRB-sized model) to `$EDGECP_WRITE_MODEL`, for benchmarks that need a model file
/// without a trained bundle (`examples/insn_bench.rs`):
/// `EDGECP_WRITE_MODEL=/tmp/model.onnx cargo test -p infer --test parity -- --ignored write_exporter_model`
#[test]
#[ignore = "writes a file; run by hand"]
fn write_exporter_model() {
    let path = std::env::var("EDGECP_WRITE_MODEL").expect("EDGECP_WRITE_MODEL=FILE");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let bytes = build(&exporter_net(128), &mut rng).encode_to_vec();
    std::fs::write(&path, bytes).expect("write the model");
}
