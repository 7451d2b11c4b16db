//! Writing GGUF files (version 3): metadata, then tensors (F32, or any type's raw blocks),
//! aligned. Used to generate the tiny test models.

use std::io::Write;
use std::path::Path;

use super::gguf::GgufValue;

const ALIGNMENT: usize = 32;

/// A GGUF file under construction.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    /// (name, row-major shape, ggml type id, bytes)
    tensors: Vec<(String, Vec<usize>, u32, Vec<u8>)>,
}

fn kind(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.push(*x as u8),
        GgufValue::U16(x) => out.extend(x.to_le_bytes()),
        GgufValue::I16(x) => out.extend(x.to_le_bytes()),
        GgufValue::U32(x) => out.extend(x.to_le_bytes()),
        GgufValue::I32(x) => out.extend(x.to_le_bytes()),
        GgufValue::U64(x) => out.extend(x.to_le_bytes()),
        GgufValue::I64(x) => out.extend(x.to_le_bytes()),
        GgufValue::F32(x) => out.extend(x.to_le_bytes()),
        GgufValue::F64(x) => out.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(items) => {
            out.extend(items.first().map_or(4, kind).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i);
            }
        }
    }
}

impl GgufWriter {
    pub fn meta(&mut self, key: &str, value: GgufValue) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Add an f32 tensor with a row-major `shape`.
    pub fn tensor(&mut self, name: &str, shape: &[usize], values: Vec<f32>) -> &mut Self {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "{name}");
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors.push((name.to_string(), shape.to_vec(), 0, bytes));
        self
    }

    /// Add a tensor of ggml type `dtype` from its raw blocks (quantized test data).
    pub fn raw_tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        dtype: super::quant::GgmlType,
        bytes: Vec<u8>,
    ) -> &mut Self {
        let elements = shape.iter().product::<usize>() as u64;
        assert_eq!(dtype.byte_size(elements), Some(bytes.len() as u64), "{name}");
        self.tensors.push((name.to_string(), shape.to_vec(), dtype.id(), bytes));
        self
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend(kind(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0usize;
        for (name, shape, dtype, bytes) in &self.tensors {
            put_str(&mut out, name);
            out.extend((shape.len() as u32).to_le_bytes());
            for d in shape.iter().rev() {
                out.extend((*d as u64).to_le_bytes());
            }
            out.extend(dtype.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset += bytes.len().div_ceil(ALIGNMENT) * ALIGNMENT;
        }
        out.resize(out.len().div_ceil(ALIGNMENT) * ALIGNMENT, 0);
        for (_, _, _, bytes) in &self.tensors {
            let start = out.len();
            out.extend(bytes);
            out.resize(start + bytes.len().div_ceil(ALIGNMENT) * ALIGNMENT, 0);
        }
        std::fs::File::create(path)?.write_all(&out)
    }
}
