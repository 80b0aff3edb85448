//! The part of ONNX's protobuf schema (onnx.proto, field numbers as published) that the
//! engine reads. Declared here with prost so that the device binary needs no ONNX library;
//! prost skips every field not listed, so any valid ONNX file decodes.

use prost::Message;

/// `ModelProto`.
#[derive(Clone, PartialEq, Message)]
pub struct Model {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<Graph>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetId>,
}

/// `OperatorSetIdProto`.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetId {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `GraphProto`.
#[derive(Clone, PartialEq, Message)]
pub struct Graph {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<Node>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<Tensor>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfo>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfo>,
}

/// `NodeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct Node {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<Attribute>,
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// `AttributeProto` (the scalar and list kinds the supported operators take).
#[derive(Clone, PartialEq, Message)]
pub struct Attribute {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    #[prost(message, optional, tag = "5")]
    pub t: Option<Tensor>,
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    /// `AttributeType` (1 FLOAT, 2 INT, 3 STRING, 4 TENSOR, 6 FLOATS, 7 INTS): ignored when
    /// reading, set by writers (some readers require it).
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

/// `TensorProto.DataType` values the engine reads.
pub const FLOAT: i32 = 1;
/// See [`FLOAT`].
pub const INT64: i32 = 7;

/// `TensorProto` (initializers; external data is not supported).
#[derive(Clone, PartialEq, Message)]
pub struct Tensor {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    /// 1 = EXTERNAL.
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

/// `ValueInfoProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `TypeProto` (tensor types only).
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorType>,
}

/// `TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorType {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<Shape>,
}

/// `TensorShapeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct Shape {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `TensorShapeProto.Dimension`: a fixed value or a symbolic name.
#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    #[prost(oneof = "DimensionValue", tags = "1, 2")]
    pub value: Option<DimensionValue>,
}

/// The two kinds of dimension.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DimensionValue {
    #[prost(int64, tag = "1")]
    Value(i64),
    #[prost(string, tag = "2")]
    Param(String),
}

impl Model {
    /// Decodes an ONNX file.
    pub fn decode_bytes(bytes: &[u8]) -> Result<Model, prost::DecodeError> {
        Model::decode(bytes)
    }
}

impl Tensor {
    /// Number of elements the dims declare (None on a negative dim or overflow).
    pub fn element_count(&self) -> Option<usize> {
        self.dims.iter().try_fold(1usize, |acc, &d| {
            usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        })
    }

    /// The values of a FLOAT tensor, from `raw_data` (little endian) or `float_data`,
    /// checked against the dims.
    pub fn floats(&self) -> Result<Vec<f32>, String> {
        if self.data_type != FLOAT {
            return Err(format!(
                "initializer {:?} has data type {}, expected FLOAT (1)",
                self.name, self.data_type
            ));
        }
        if self.data_location == 1 {
            return Err(format!(
                "initializer {:?} keeps its data in an external file, which is not supported",
                self.name
            ));
        }
        let n = self.element_count().ok_or_else(|| {
            format!(
                "initializer {:?} has invalid dims {:?}",
                self.name, self.dims
            )
        })?;
        let v: Vec<f32> = if !self.raw_data.is_empty() {
            self.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        } else {
            self.float_data.clone()
        };
        let stored = if self.raw_data.is_empty() {
            v.len()
        } else {
            self.raw_data.len() / 4
        };
        if stored != n || (!self.raw_data.is_empty() && !self.raw_data.len().is_multiple_of(4)) {
            return Err(format!(
                "initializer {:?} declares dims {:?} ({n} values) but holds {} bytes of data",
                self.name,
                self.dims,
                if self.raw_data.is_empty() {
                    self.float_data.len() * 4
                } else {
                    self.raw_data.len()
                }
            ));
        }
        Ok(v)
    }

    /// The values of an INT64 tensor (from `raw_data` or `int64_data`).
    pub fn ints(&self) -> Result<Vec<i64>, String> {
        if self.data_type != INT64 {
            return Err(format!(
                "initializer {:?} has data type {}, expected INT64 (7)",
                self.name, self.data_type
            ));
        }
        let v: Vec<i64> = if !self.raw_data.is_empty() {
            if !self.raw_data.len().is_multiple_of(8) {
                return Err(format!(
                    "initializer {:?}: {} bytes of INT64 data is not a multiple of 8",
                    self.name,
                    self.raw_data.len()
                ));
            }
            self.raw_data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()
        } else {
            self.int64_data.clone()
        };
        if Some(v.len()) != self.element_count() {
            return Err(format!(
                "initializer {:?} declares dims {:?} but holds {} values",
                self.name,
                self.dims,
                v.len()
            ));
        }
        Ok(v)
    }
}
