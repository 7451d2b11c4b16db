//! GGUF (llama.cpp's format): header, metadata, tensor directory and tensor data, parsed with
//! bounds checks everywhere, so a truncated or corrupt file is an error, never a panic.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::quant::{self, GgmlType};

const MAGIC: &[u8; 4] = b"GGUF";
/// Caps that keep a corrupt count from allocating the machine away.
const MAX_ITEMS: u64 = 1 << 24;
const DEFAULT_ALIGNMENT: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("not a GGUF file (magic {0:?})")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    UnsupportedVersion(u32),
    #[error("the file ends early: {what} at byte {at}")]
    Truncated { what: String, at: usize },
    #[error("corrupt GGUF: {0}")]
    Invalid(String),
    #[error("tensor `{tensor}` has type {dtype}, which this build cannot read")]
    UnsupportedType { tensor: String, dtype: GgmlType },
    #[error("no tensor named `{0}`")]
    NoTensor(String),
    #[error("metadata `{key}`: {problem}")]
    Metadata { key: String, problem: String },
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// Any integer value that fits in u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for GgufValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgufValue::String(s) => write!(f, "{s:?}"),
            GgufValue::Array(v) => write!(f, "[{} items]", v.len()),
            other => write!(f, "{other:?}"),
        }
    }
}

/// One tensor's directory entry. `dims` are in GGUF order: the first is the fastest-varying
/// (columns of a row-major matrix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// From the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of values; None when the dimensions overflow (a corrupt file).
    pub fn elements(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }

    /// Row-major shape (slowest first), as numpy and safetensors write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file held in memory.
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(GgufError::Truncated { what: what.to_string(), at: self.at });
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        Ok(self.take(N, what)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn count(&mut self, what: &str) -> Result<usize, GgufError> {
        let n = self.u64(what)?;
        if n > MAX_ITEMS {
            return Err(GgufError::Invalid(format!("{what} = {n} is implausibly large")));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let len = usize::try_from(len).map_err(|_| GgufError::Invalid(format!("{what}: length {len}")))?;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| GgufError::Invalid(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, kind: u32, key: &str, depth: u8) -> Result<GgufValue, GgufError> {
        Ok(match kind {
            0 => GgufValue::U8(self.array::<1>(key)?[0]),
            1 => GgufValue::I8(self.array::<1>(key)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => GgufValue::U32(self.u32(key)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(GgufError::Invalid(format!("`{key}`: bool byte {b}"))),
            },
            8 => GgufValue::String(self.string(key)?),
            9 => {
                if depth > 2 {
                    return Err(GgufError::Invalid(format!("`{key}`: arrays nested too deep")));
                }
                let elem = self.u32(key)?;
                let n = self.count(key)?;
                let mut items = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(key)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
            other => return Err(GgufError::Invalid(format!("`{key}`: unknown value type {other}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let bytes = std::fs::read(path).map_err(|source| GgufError::Io { path: path.display().to_string(), source })?;
        Self::parse(bytes)
    }

    pub fn parse(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let mut c = Cursor { bytes: &bytes, at: 0 };
        let magic = c.array::<4>("magic")?;
        if &magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.count("tensor count")?;
        let n_kv = c.count("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let kind = c.u32(&key)?;
            let value = c.value(kind, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16));
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(GgufError::Invalid(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let dims = (0..n_dims).map(|_| c.u64(&name)).collect::<Result<Vec<_>, _>>()?;
            let dtype = GgmlType::from_id(c.u32(&name)?);
            let offset = c.u64(&name)?;
            tensors.push(TensorInfo { name, dims, dtype, offset });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| GgufError::Metadata {
                key: "general.alignment".into(),
                problem: format!("{v} is not a power of two"),
            })?,
        };
        let data_start = (c.at as u64).div_ceil(alignment) * alignment;
        let data_start = usize::try_from(data_start).map_err(|_| GgufError::Invalid("data offset".into()))?;
        let file = Self { version, metadata, tensors, bytes, data_start };
        // Every readable tensor must lie inside the file; others (k-quants, ...) fail when read.
        for t in file.tensors.iter().filter(|t| t.dtype.block().is_some()) {
            file.tensor_bytes(t)?;
        }
        Ok(file)
    }

    /// A metadata value, or an error naming the missing key.
    pub fn get(&self, key: &str) -> Result<&GgufValue, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::Metadata { key: key.into(), problem: "missing".into() })
    }

    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.get(key)?;
        v.as_u64().ok_or_else(|| GgufError::Metadata { key: key.into(), problem: format!("{v} is not an integer") })
    }

    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.get(key)?;
        v.as_f64().ok_or_else(|| GgufError::Metadata { key: key.into(), problem: format!("{v} is not a number") })
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.get(key)?;
        v.as_str().ok_or_else(|| GgufError::Metadata { key: key.into(), problem: format!("{v} is not a string") })
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensors.iter().find(|t| t.name == name).ok_or_else(|| GgufError::NoTensor(name.into()))
    }

    /// The raw (possibly quantized) bytes of a tensor.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8], GgufError> {
        let elements = t
            .elements()
            .ok_or_else(|| GgufError::Invalid(format!("tensor `{}` dims {:?} overflow", t.name, t.dims)))?;
        let Some((per_block, _)) = t.dtype.block() else {
            return Err(GgufError::UnsupportedType { tensor: t.name.clone(), dtype: t.dtype });
        };
        let size = t.dtype.byte_size(elements).ok_or_else(|| {
            GgufError::Invalid(format!(
                "tensor `{}` has {elements} values, not a whole number of {per_block}-value blocks",
                t.name
            ))
        })?;
        let start = (self.data_start as u64).checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(size));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.bytes.len() as u64 => Ok(&self.bytes[s as usize..e as usize]),
            _ => Err(GgufError::Truncated { what: format!("data of tensor `{}`", t.name), at: self.bytes.len() }),
        }
    }

    /// A tensor as f32 values, in file order (row-major for `shape()`).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let t = self.tensor(name)?;
        let bytes = self.tensor_bytes(t)?;
        let count = usize::try_from(t.elements().unwrap_or(0))
            .map_err(|_| GgufError::Invalid(format!("tensor `{name}` is too large")))?;
        quant::dequantize(t.dtype, bytes, count)
            .ok_or_else(|| GgufError::UnsupportedType { tensor: t.name.clone(), dtype: t.dtype })
    }
}
