//! The query statistics file: safetensors holding `query_mean` `(L, H, d)` and `query_cov` `(L,
//! H, d, d)` (pre-RoPE queries), `q_filters` `(L, H_kv, d)` and `rope_inv_freq` `(d / 2)`, all
//! f32, with a JSON header under the metadata key [`HEADER_KEY`] ([`StatsHeader`]: format
//! version, model identity and shape, how the statistics were collected, each tensor's SHA-256).
//!
//! Reading checks everything before a press uses it: the header parses and is of this format
//! version, the file holds exactly the tensors the header lists, with their checksums and the
//! shapes the header's model shape gives, and only finite values (and no negative variance).
//! A file without the header (kvpress's own Hugging Face files: `query_mean`/`query_cov` of
//! `ExpectedAttentionStats`, `q_filters` of `QFilters`, in any float dtype) is read too; its
//! tensors can only be checked for their names, shapes against the model, and values.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::TensorView;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::StatsFileError;

/// The metadata key holding the JSON header.
pub const HEADER_KEY: &str = "kvpress_query_stats";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Mean of the pre-RoPE queries, `(n_layers, n_heads, head_dim)`.
pub const QUERY_MEAN: &str = "query_mean";
/// Covariance of the pre-RoPE queries (normalised by `N - 1`), `(n_layers, n_heads, head_dim,
/// head_dim)`.
pub const QUERY_COV: &str = "query_cov";
/// One Q-Filter per KV head, `(n_layers, n_kv_heads, head_dim)`, in kvpress's sign convention
/// (see [`crate::QFilter`]).
pub const Q_FILTERS: &str = "q_filters";
/// The model's RoPE inverse frequencies, `(head_dim / 2)`.
pub const ROPE_INV_FREQ: &str = "rope_inv_freq";
/// Every tensor name a query statistics file may hold.
pub const TENSOR_NAMES: [&str; 4] = [QUERY_MEAN, QUERY_COV, Q_FILTERS, ROPE_INV_FREQ];

/// The model a file was computed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelIdentity {
    /// `kvpress_models::model_sha256` of the model's files.
    pub sha256: String,
    /// The model's file or folder name (for messages only).
    pub name: String,
}

/// The attention layout the statistics are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    /// Decoder layers.
    pub n_layers: usize,
    /// Query heads per layer.
    pub n_heads: usize,
    /// KV heads per layer.
    pub n_kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

impl ModelShape {
    /// The shape `name` has for this model, `None` for an unknown name.
    pub fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        let Self {
            n_layers: l,
            n_heads: h,
            n_kv_heads: kv,
            head_dim: d,
        } = *self;
        match name {
            QUERY_MEAN => Some(vec![l, h, d]),
            QUERY_COV => Some(vec![l, h, d, d]),
            Q_FILTERS => Some(vec![l, kv, d]),
            ROPE_INV_FREQ => Some(vec![d / 2]),
            _ => None,
        }
    }
}

impl std::fmt::Display for ModelShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} layers, {} query heads, {} KV heads, head dim {}",
            self.n_layers, self.n_heads, self.n_kv_heads, self.head_dim
        )
    }
}

/// One calibration text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationText {
    /// Its file name (for the record).
    pub name: String,
    /// SHA-256 of its bytes.
    pub sha256: String,
    /// Its tokens (with the BOS of each sequence, when the model adds one).
    pub tokens: usize,
}

/// The JSON header of a file written by `kvpress calibrate-queries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsHeader {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The model the queries came from.
    pub model: ModelIdentity,
    /// Its attention layout.
    pub shape: ModelShape,
    /// First tokens of each sequence left out of the statistics.
    pub n_sink: usize,
    /// Longest sequence the texts were cut into, in tokens.
    pub max_tokens: usize,
    /// Sequences run through the model.
    pub n_sequences: usize,
    /// Queries collected per head (tokens after the sinks, over all sequences).
    pub n_queries: u64,
    /// The calibration texts.
    pub texts: Vec<CalibrationText>,
    /// SHA-256 of each tensor's stored bytes, by name.
    pub tensor_sha256: BTreeMap<String, String>,
}

/// A tensor of the file, as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub data: Vec<f32>,
}

/// A query statistics file in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryStatsFile {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// The header; `None` for a file written elsewhere (kvpress's Hugging Face files).
    pub header: Option<StatsHeader>,
    tensors: BTreeMap<String, StoredTensor>,
}

/// The tensors a calibration produced, as f32 in the layouts of [`QUERY_MEAN`], [`QUERY_COV`],
/// [`Q_FILTERS`] and [`ROPE_INV_FREQ`].
#[derive(Debug, Clone, PartialEq)]
pub struct CalibratedTensors {
    /// `(L, H, d)`.
    pub query_mean: Vec<f32>,
    /// `(L, H, d, d)`.
    pub query_cov: Vec<f32>,
    /// `(L, H_kv, d)`.
    pub q_filters: Vec<f32>,
    /// `(d / 2)`.
    pub rope_inv_freq: Vec<f32>,
}

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl QueryStatsFile {
    /// A file of calibrated statistics: `header` (its `tensor_sha256` is filled in here) and
    /// `tensors`, whose lengths must follow `header.shape`.
    pub fn calibrated(
        path: &Path,
        mut header: StatsHeader,
        tensors: CalibratedTensors,
    ) -> Result<Self, StatsFileError> {
        let CalibratedTensors {
            query_mean,
            query_cov,
            q_filters,
            rope_inv_freq,
        } = tensors;
        let mut stored = BTreeMap::new();
        for (name, data) in [
            (QUERY_MEAN, query_mean),
            (QUERY_COV, query_cov),
            (Q_FILTERS, q_filters),
            (ROPE_INV_FREQ, rope_inv_freq),
        ] {
            let shape = header.shape.tensor_shape(name).unwrap_or_default();
            if shape.iter().product::<usize>() != data.len() {
                return Err(StatsFileError::Calibration(format!(
                    "{name} has {} values, its shape {shape:?} needs {}",
                    data.len(),
                    shape.iter().product::<usize>()
                )));
            }
            stored.insert(name.to_string(), StoredTensor { shape, data });
        }
        header.tensor_sha256 = stored
            .iter()
            .map(|(name, t)| (name.clone(), sha256_hex(&f32_bytes(&t.data))))
            .collect();
        let file = Self {
            path: path.to_path_buf(),
            header: Some(header),
            tensors: stored,
        };
        file.check_values()?;
        Ok(file)
    }

    /// The tensor `name`, if the file holds it.
    pub fn tensor(&self, name: &str) -> Option<&StoredTensor> {
        self.tensors.get(name)
    }

    /// Names of the tensors the file holds, comma-separated.
    pub fn tensor_names(&self) -> String {
        let names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.join(", ")
    }

    /// The safetensors bytes of the file (f32 tensors and the JSON header).
    pub fn to_bytes(&self) -> Result<Vec<u8>, StatsFileError> {
        let invalid = |message: String| StatsFileError::Format {
            path: self.path.clone(),
            message,
        };
        let header = self.header.as_ref().ok_or_else(|| {
            invalid("only calibrated statistics (with a header) are written".into())
        })?;
        let bytes: Vec<(&String, Vec<u8>, &Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(name, t)| (name, f32_bytes(&t.data), &t.shape))
            .collect();
        let views = bytes
            .iter()
            .map(|(name, data, shape)| {
                TensorView::new(safetensors::Dtype::F32, shape.to_vec(), data)
                    .map(|view| (name.as_str(), view))
                    .map_err(|e| invalid(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metadata = HashMap::from([(
            HEADER_KEY.to_string(),
            serde_json::to_string(header).map_err(|e| invalid(e.to_string()))?,
        )]);
        safetensors::serialize(views, Some(metadata)).map_err(|e| invalid(e.to_string()))
    }

    /// Reads and checks the file at `path` (see the module docs). The tensor names are checked
    /// from the safetensors header before the data is read, so that a wrong path to a large
    /// file (model weights) is refused without reading it.
    pub fn read(path: &Path) -> Result<Self, StatsFileError> {
        let read_error = |e: std::io::Error| StatsFileError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut file = std::fs::File::open(path).map_err(read_error)?;
        check_tensor_names(&mut file, path)?;
        let mut bytes = Vec::new();
        file.seek(std::io::SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut bytes))
            .map_err(read_error)?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses and checks the bytes of a file (`path` for messages).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, StatsFileError> {
        let invalid = |message: String| StatsFileError::Format {
            path: path.to_path_buf(),
            message,
        };
        let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| invalid(format!("not a safetensors file ({e})")))?;
        let header = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(HEADER_KEY))
            .map(|text| parse_header(text, path))
            .transpose()?;
        let file = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| invalid(format!("not a safetensors file ({e})")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in file.tensors() {
            if !TENSOR_NAMES.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "it holds a tensor `{name}`; valid tensors are {}",
                    TENSOR_NAMES.join(", ")
                )));
            }
            if let Some(header) = &header {
                if view.dtype() != safetensors::Dtype::F32 {
                    return Err(invalid(format!(
                        "tensor `{name}` is {:?}; calibrated files store F32",
                        view.dtype()
                    )));
                }
                if header.tensor_sha256.get(&name) != Some(&sha256_hex(view.data())) {
                    return Err(match header.tensor_sha256.contains_key(&name) {
                        true => StatsFileError::ChecksumMismatch {
                            path: path.to_path_buf(),
                            tensor: name,
                        },
                        false => invalid(format!("tensor `{name}` is not listed in its header")),
                    });
                }
            }
            let data = to_f32(&view).map_err(|e| invalid(format!("tensor `{name}`: {e}")))?;
            let shape = view.shape().to_vec();
            tensors.insert(name, StoredTensor { shape, data });
        }
        if tensors.is_empty() {
            return Err(invalid(format!(
                "it holds no tensor; valid tensors are {}",
                TENSOR_NAMES.join(", ")
            )));
        }
        if let Some(header) = &header {
            for name in header.tensor_sha256.keys() {
                if !tensors.contains_key(name) {
                    return Err(invalid(format!(
                        "its header lists a tensor `{name}` that the file does not hold"
                    )));
                }
            }
            for (name, tensor) in &tensors {
                let expected = header.shape.tensor_shape(name).unwrap_or_default();
                if tensor.shape != expected {
                    return Err(StatsFileError::Shape {
                        path: path.to_path_buf(),
                        tensor: name.clone(),
                        expected,
                        found: tensor.shape.clone(),
                        why: format!("the header's model has {}", header.shape),
                    });
                }
            }
        }
        let file = Self {
            path: path.to_path_buf(),
            header,
            tensors,
        };
        file.check_values()?;
        Ok(file)
    }

    /// Refuses non-finite values anywhere and negative variances on a covariance's diagonal.
    fn check_values(&self) -> Result<(), StatsFileError> {
        for (name, tensor) in &self.tensors {
            let bad = |problem: String| StatsFileError::BadValue {
                path: self.path.clone(),
                tensor: name.clone(),
                problem,
            };
            // Elements per leading index (the layer, for every tensor but rope_inv_freq).
            let per_layer = tensor.shape.iter().skip(1).product::<usize>().max(1);
            if let Some(i) = tensor.data.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!(
                    "holds {} at flat index {i} (layer {})",
                    tensor.data[i],
                    i / per_layer
                )));
            }
            if name == QUERY_COV && tensor.shape.len() == 4 && tensor.shape[3] > 0 {
                let d = tensor.shape[3];
                for (m, matrix) in tensor.data.chunks_exact(d * d).enumerate() {
                    if let Some(i) = (0..d).find(|&i| matrix[i * d + i] < 0.0) {
                        let heads = tensor.shape[1];
                        return Err(bad(format!(
                            "has a negative variance {} (layer {}, head {}, dimension {i})",
                            matrix[i * d + i],
                            m / heads,
                            m % heads
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Largest safetensors header read (the JSON listing the tensors and the metadata).
const MAX_HEADER_BYTES: u64 = 1 << 24;

/// Refuses a file whose safetensors header lists a tensor no statistics file holds, reading
/// only the header. Anything else wrong is left to [`QueryStatsFile::from_bytes`].
fn check_tensor_names(file: &mut std::fs::File, path: &Path) -> Result<(), StatsFileError> {
    let invalid = |message: String| StatsFileError::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut length = [0u8; 8];
    if file.read_exact(&mut length).is_err() {
        return Err(invalid(
            "not a safetensors file (shorter than 8 bytes)".into(),
        ));
    }
    let length = u64::from_le_bytes(length);
    if length > MAX_HEADER_BYTES {
        return Err(invalid(format!(
            "not a safetensors file (a header of {length} bytes)"
        )));
    }
    let mut header = Vec::new();
    file.take(length)
        .read_to_end(&mut header)
        .map_err(|e| invalid(format!("cannot read its header ({e})")))?;
    let Ok(serde_json::Value::Object(entries)) = serde_json::from_slice(&header) else {
        return Ok(());
    };
    if let Some(name) = entries
        .keys()
        .find(|k| *k != "__metadata__" && !TENSOR_NAMES.contains(&k.as_str()))
    {
        return Err(invalid(format!(
            "it holds a tensor `{name}`; valid tensors are {}",
            TENSOR_NAMES.join(", ")
        )));
    }
    Ok(())
}

/// The header JSON, refusing other format versions before reading their fields.
fn parse_header(text: &str, path: &Path) -> Result<StatsHeader, StatsFileError> {
    let invalid = |message: String| StatsFileError::Format {
        path: path.to_path_buf(),
        message,
    };
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| invalid(format!("its `{HEADER_KEY}` header is not JSON ({e})")))?;
    let version = value.get("format_version").and_then(|v| v.as_u64());
    if version != Some(u64::from(FORMAT_VERSION)) {
        return Err(invalid(format!(
            "its format version is {}, this build reads version {FORMAT_VERSION}; compute it \
             again with `kvpress calibrate-queries`",
            version.map_or_else(|| "missing".to_string(), |v| v.to_string())
        )));
    }
    serde_json::from_value(value)
        .map_err(|e| invalid(format!("its `{HEADER_KEY}` header does not parse ({e})")))
}

/// A safetensors view as f32 values (F32, F16, BF16 and F64 are read).
fn to_f32(view: &TensorView<'_>) -> Result<Vec<f32>, String> {
    let dtype = match view.dtype() {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::F64 => DType::F64,
        other => return Err(format!("dtype {other:?}; valid are F32, F16, BF16, F64")),
    };
    Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
        .map_err(|e| e.to_string())
}
