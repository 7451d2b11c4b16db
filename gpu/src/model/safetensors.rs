//! The safetensors format: an 8-byte little-endian header length, a JSON header mapping names to
//! dtype, shape and byte range, then the data. Read (F32, F16, BF16, with bounds checks) and
//! written (for `armature model export`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Deserialize;

use super::ModelError;
use super::quant::half_to_f32;

#[derive(Debug, Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// One safetensors file in memory.
pub struct SafeTensors {
    bytes: Vec<u8>,
    data_start: usize,
    entries: BTreeMap<String, Entry>,
    path: String,
}

impl std::fmt::Debug for SafeTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensors").field("path", &self.path).field("tensors", &self.entries.len()).finish()
    }
}

impl SafeTensors {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::Metadata(format!("{}: {e}", path.display())))?;
        Self::parse(bytes, &path.display().to_string())
    }

    pub fn parse(bytes: Vec<u8>, path: &str) -> Result<Self, ModelError> {
        let bad = |what: String| ModelError::Metadata(format!("{path}: {what}"));
        let len = bytes.get(..8).ok_or_else(|| bad("shorter than its header length".into()))?;
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        let end = usize::try_from(len).ok().and_then(|l| l.checked_add(8)).filter(|&e| e <= bytes.len());
        let end = end.ok_or_else(|| bad(format!("header of {len} bytes does not fit in the file")))?;
        let mut header: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..end]).map_err(|e| bad(format!("header is not JSON: {e}")))?;
        header.remove("__metadata__");
        let mut entries = BTreeMap::new();
        for (name, v) in header {
            let e: Entry = serde_json::from_value(v).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
            let [lo, hi] = e.data_offsets;
            let size = match e.dtype.as_str() {
                "F32" => 4,
                "F16" | "BF16" => 2,
                other => return Err(ModelError::Unsupported(format!("safetensors dtype {other} (tensor `{name}`)"))),
            };
            let count = e.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            if lo > hi
                || end.checked_add(hi).is_none_or(|h| h > bytes.len())
                || count.and_then(|c| c.checked_mul(size)) != Some(hi - lo)
            {
                return Err(bad(format!(
                    "tensor `{name}` has inconsistent offsets {lo}..{hi} for shape {:?}",
                    e.shape
                )));
            }
            entries.insert(name, e);
        }
        Ok(Self { bytes, data_start: end, entries, path: path.to_string() })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn has(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// A tensor as f32, row-major.
    pub fn f32(&self, name: &str) -> Option<Vec<f32>> {
        let e = self.entries.get(name)?;
        let raw = &self.bytes[self.data_start + e.data_offsets[0]..self.data_start + e.data_offsets[1]];
        Some(match e.dtype.as_str() {
            "F32" => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            "F16" => raw.chunks_exact(2).map(|b| half_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
            _ => {
                raw.chunks_exact(2).map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)).collect()
            }
        })
    }
}

/// Write f32 tensors (name, shape, values) as one safetensors file.
pub fn write_f32(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        let size = data.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size] }),
        );
        offset += size;
    }
    let mut json = serde_json::to_vec(&header)?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(&(json.len() as u64).to_le_bytes())?;
    out.write_all(&json)?;
    for (_, _, data) in tensors {
        for v in data {
            out.write_all(&v.to_le_bytes())?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("armature-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        let t = vec![
            ("a.weight".to_string(), vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-3, 7.0]),
            ("b".to_string(), vec![1], vec![9.0]),
        ];
        write_f32(&path, &t).unwrap();
        let st = SafeTensors::open(&path).unwrap();
        assert_eq!(st.names().collect::<Vec<_>>(), ["a.weight", "b"]);
        assert_eq!(st.shape("a.weight"), Some(&[2, 3][..]));
        assert_eq!(st.f32("a.weight").unwrap(), t[0].2);
        assert_eq!(st.f32("b").unwrap(), vec![9.0]);
        let bytes = std::fs::read(&path).unwrap();
        for len in [0, 7, 8, 20, bytes.len() - 1] {
            assert!(SafeTensors::parse(bytes[..len].to_vec(), "t").is_err(), "{len}");
        }
    }
}
