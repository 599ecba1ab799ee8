//! Tiny random Llama / Qwen2 / Qwen3 models written as GGUF bytes (in memory) or as Hugging Face
//! folders (in a temporary directory), for download-free tests of the `models` crate.
//!
//! Weights are drawn from a seeded generator in the Hugging Face layout; the GGUF writer applies
//! llama.cpp's Q/K row permutation for llama, exactly like `convert_hf_to_gguf.py`, so that the
//! loader has something real to undo.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use kvpress_core::ModelCache;
use models::param::{LayerParam, Param};
use models::{GgufFile, LoadedModel, Model, WeightMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

/// The architectures the crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3];

    /// `general.architecture` / `model_type`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
}

/// Byte-level BPE vocabulary of the tiny models (40 tokens, = the model's vocab size).
pub const TOKENS: [&str; 40] = [
    "<|endoftext|>", // 0: bos, control
    "<|im_start|>",  // 1: control
    "<|im_end|>",    // 2: eos, control
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "h",
    "i",
    "j",
    "k",
    "l",
    "m",
    "n",
    "o",
    "p",
    "q",
    "r",
    "s",
    "t",
    "u",
    "v",
    "w",
    "x",
    "y",
    "z",     // 3..=28
    "Ġ",     // 29: byte-level space
    "Ċ",     // 30: byte-level newline
    "he",    // 31
    "ll",    // 32
    "llo",   // 33
    "hello", // 34
    "Ġw",    // 35
    ":",     // 36
    "!",     // 37
    ".",     // 38
    ",",     // 39
];
pub const BOS_ID: u32 = 0;
pub const IM_START_ID: u32 = 1;
pub const EOS_ID: u32 = 2;
pub const HELLO_ID: u32 = 34;
pub const SPACE_W_ID: u32 = 35;
pub const NEWLINE_ID: u32 = 30;
pub const MERGES: [&str; 5] = ["h e", "l l", "ll o", "he llo", "Ġ w"];

/// Id of a single lowercase letter.
pub fn letter_id(c: char) -> u32 {
    assert!(c.is_ascii_lowercase());
    3 + (c as u32 - 'a' as u32)
}

/// ChatML, as Qwen and SmolLM2 ship it (without a default system message).
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A prompt of ten valid token ids.
pub const PROMPT: [u32; 10] = [1, 5, 9, 13, 31, 34, 29, 17, 22, 38];

/// Hyper-parameters of a tiny model.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub arch: Arch,
    pub tie_word_embeddings: bool,
    pub n_layers: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub seed: u64,
}

impl Spec {
    /// 2 layers, hidden 64, 4 query heads, 2 KV heads, MLP 128, vocab 40, 64 positions. Qwen3
    /// gets head_dim 32 (≠ 64 / 4) to exercise `attention.key_length` / `head_dim`.
    pub fn new(arch: Arch) -> Self {
        Self {
            arch,
            tie_word_embeddings: false,
            n_layers: 2,
            hidden: 64,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: if arch == Arch::Qwen3 { 32 } else { 16 },
            intermediate: 128,
            vocab: TOKENS.len(),
            context_length: 64,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            seed: 42,
        }
    }

    pub fn tied(mut self, tied: bool) -> Self {
        self.tie_word_embeddings = tied;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Every parameter the architecture needs, with its shape and whether it is a norm weight.
    pub fn params(&self) -> Vec<(Param, Vec<usize>, bool)> {
        use LayerParam::*;
        let (h, q, kv, m) = (self.hidden, self.q_dim(), self.kv_dim(), self.intermediate);
        let mut out = vec![(Param::Embedding, vec![self.vocab, h], false)];
        for i in 0..self.n_layers {
            let l = |p| Param::Layer(i, p);
            out.push((l(AttentionNorm), vec![h], true));
            out.push((l(QueryWeight), vec![q, h], false));
            out.push((l(KeyWeight), vec![kv, h], false));
            out.push((l(ValueWeight), vec![kv, h], false));
            if self.arch == Arch::Qwen2 {
                out.push((l(QueryBias), vec![q], false));
                out.push((l(KeyBias), vec![kv], false));
                out.push((l(ValueBias), vec![kv], false));
            }
            if self.arch == Arch::Qwen3 {
                out.push((l(QueryNorm), vec![self.head_dim], true));
                out.push((l(KeyNorm), vec![self.head_dim], true));
            }
            out.push((l(OutputWeight), vec![h, q], false));
            out.push((l(MlpNorm), vec![h], true));
            out.push((l(GateWeight), vec![m, h], false));
            out.push((l(UpWeight), vec![m, h], false));
            out.push((l(DownWeight), vec![h, m], false));
        }
        out.push((Param::FinalNorm, vec![h], true));
        if !self.tie_word_embeddings {
            out.push((Param::LmHead, vec![self.vocab, h], false));
        }
        out
    }

    /// Seeded random weights in the Hugging Face layout.
    pub fn build(self) -> TinyModel {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let weights = self
            .params()
            .into_iter()
            .map(|(param, shape, is_norm)| {
                let n: usize = shape.iter().product();
                let data: Vec<f32> = (0..n)
                    .map(|_| {
                        let g = 0.1 * gaussian(&mut rng);
                        if is_norm {
                            1.0 + g
                        } else {
                            g
                        }
                    })
                    .collect();
                let tensor = Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor");
                (param, tensor)
            })
            .collect();
        TinyModel {
            spec: self,
            weights,
        }
    }
}

/// Standard normal sample (Box–Muller).
fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random::<f32>().max(1e-7);
    let u2: f32 = rng.random::<f32>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// A tiny model's hyper-parameters and weights (Hugging Face layout, f32).
#[derive(Debug, Clone)]
pub struct TinyModel {
    pub spec: Spec,
    pub weights: Vec<(Param, Tensor)>,
}

impl TinyModel {
    /// A weight by parameter.
    pub fn weight(&self, param: Param) -> &Tensor {
        &self
            .weights
            .iter()
            .find(|(p, _)| *p == param)
            .unwrap_or_else(|| panic!("no {param:?}"))
            .1
    }

    /// GGUF writer pre-filled with metadata and tensors; weights (≥ 2-D) in `dtype`, 1-D
    /// tensors always F32 (like llama.cpp).
    pub fn gguf(&self, dtype: GgmlDType) -> GgufBuilder {
        self.gguf_with(dtype, self.spec.arch == Arch::Llama)
    }

    /// Like [`Self::gguf`], choosing whether llama's Q/K row permutation is applied.
    pub fn gguf_with(&self, dtype: GgmlDType, permute_qk: bool) -> GgufBuilder {
        let s = &self.spec;
        let arch = s.arch.name();
        let k = |key: &str| format!("{arch}.{key}");
        let mut metadata: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(arch.into())),
            ("general.name".into(), Value::String(format!("tiny-{arch}"))),
            (k("context_length"), Value::U32(s.context_length as u32)),
            (k("embedding_length"), Value::U32(s.hidden as u32)),
            (k("block_count"), Value::U32(s.n_layers as u32)),
            (k("feed_forward_length"), Value::U32(s.intermediate as u32)),
            (k("attention.head_count"), Value::U32(s.n_heads as u32)),
            (
                k("attention.head_count_kv"),
                Value::U32(s.n_kv_heads as u32),
            ),
            (
                k("attention.layer_norm_rms_epsilon"),
                Value::F32(s.rms_norm_eps as f32),
            ),
            (k("rope.freq_base"), Value::F32(s.rope_theta)),
        ];
        if s.head_dim != s.hidden / s.n_heads {
            metadata.push((k("attention.key_length"), Value::U32(s.head_dim as u32)));
            metadata.push((k("attention.value_length"), Value::U32(s.head_dim as u32)));
        }
        metadata.extend(tokenizer_metadata());
        metadata.push((
            "tokenizer.chat_template".into(),
            Value::String(CHATML.into()),
        ));

        let tensors = self
            .weights
            .iter()
            .map(|(param, tensor)| {
                let tensor = match param {
                    Param::Layer(_, LayerParam::QueryWeight) if permute_qk => {
                        permute_rows(tensor, s.n_heads)
                    }
                    Param::Layer(_, LayerParam::KeyWeight) if permute_qk => {
                        permute_rows(tensor, s.n_kv_heads)
                    }
                    _ => tensor.clone(),
                };
                let dtype = if tensor.rank() == 1 {
                    GgmlDType::F32
                } else {
                    dtype
                };
                let q = QTensor::quantize(&tensor, dtype).expect("quantize");
                (param.gguf_name(), q)
            })
            .collect();
        GgufBuilder { metadata, tensors }
    }

    /// The weights under their Hugging Face names.
    pub fn hf_tensors(&self) -> Vec<(String, Tensor)> {
        self.weights
            .iter()
            .map(|(p, t)| (p.hf_name(), t.clone()))
            .collect()
    }

    /// `config.json` of this model.
    pub fn hf_config(&self) -> serde_json::Value {
        let s = &self.spec;
        serde_json::json!({
            "architectures": ["TinyForCausalLM"],
            "model_type": s.arch.name(),
            "vocab_size": s.vocab,
            "hidden_size": s.hidden,
            "intermediate_size": s.intermediate,
            "num_hidden_layers": s.n_layers,
            "num_attention_heads": s.n_heads,
            "num_key_value_heads": s.n_kv_heads,
            "head_dim": s.head_dim,
            "rms_norm_eps": s.rms_norm_eps,
            "rope_theta": s.rope_theta,
            "max_position_embeddings": s.context_length,
            "tie_word_embeddings": s.tie_word_embeddings,
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
            "torch_dtype": "float32",
        })
    }

    /// A Hugging Face folder: config.json, tokenizer.json, and the weights in `n_files`
    /// safetensors files (layers spread across files).
    pub fn hf_folder(&self, n_files: usize) -> TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        self.write_hf_folder(dir.path(), n_files);
        dir
    }

    /// Writes the Hugging Face files into an existing folder.
    pub fn write_hf_folder(&self, dir: &Path, n_files: usize) {
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&self.hf_config()).unwrap(),
        )
        .unwrap();
        write_tokenizer_json(&dir.join("tokenizer.json"));
        let tensors = self.hf_tensors();
        let n_files = n_files.max(1);
        let mut files: Vec<HashMap<String, Tensor>> = vec![HashMap::new(); n_files];
        for (i, (name, tensor)) in tensors.into_iter().enumerate() {
            files[i * n_files / self.weights.len()].insert(name, tensor);
        }
        for (i, file) in files.iter().enumerate() {
            let name = if n_files == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", i + 1, n_files)
            };
            candle_core::safetensors::save(file, dir.join(name)).unwrap();
        }
    }
}

/// llama.cpp's converter row order for a Q/K weight: per head, rows `(2, head_dim/2)` →
/// `(head_dim/2, 2)`, i.e. GGUF row `2i` = HF row `i`, GGUF row `2i+1` = HF row `i + head_dim/2`.
pub fn permute_rows(weight: &Tensor, n_heads: usize) -> Tensor {
    let (rows, cols) = weight.dims2().unwrap();
    let head_dim = rows / n_heads;
    weight
        .reshape((n_heads, 2, head_dim / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// `tokenizer.ggml.*` metadata of the tiny byte-level BPE vocabulary.
pub fn tokenizer_metadata() -> Vec<(String, Value)> {
    let strings =
        |items: &[&str]| Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect());
    let token_types = TOKENS
        .iter()
        .map(|t| Value::I32(if t.starts_with("<|") { 3 } else { 1 }))
        .collect();
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), strings(&TOKENS)),
        ("tokenizer.ggml.merges".into(), strings(&MERGES)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(token_types),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(BOS_ID)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(EOS_ID)),
        ("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)),
    ]
}

/// Saves the tokenizer built from the GGUF metadata as a Hugging Face `tokenizer.json`.
pub fn write_tokenizer_json(path: &Path) {
    let bytes = GgufBuilder {
        metadata: tokenizer_metadata(),
        tensors: Vec::new(),
    }
    .bytes();
    let file =
        GgufFile::from_reader("tokenizer-only".into(), Box::new(Cursor::new(bytes))).unwrap();
    let tokenizer = models::TextTokenizer::from_gguf(&file).unwrap();
    tokenizer.inner().save(path, false).unwrap();
}

/// Metadata and tensors of a GGUF file, editable before writing.
pub struct GgufBuilder {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<(String, QTensor)>,
}

impl GgufBuilder {
    /// Sets (or replaces) a metadata entry.
    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Removes a metadata entry.
    pub fn remove_key(mut self, key: &str) -> Self {
        let before = self.metadata.len();
        self.metadata.retain(|(k, _)| k != key);
        assert_ne!(before, self.metadata.len(), "no metadata key {key}");
        self
    }

    /// Removes a tensor.
    pub fn remove_tensor(mut self, name: &str) -> Self {
        let before = self.tensors.len();
        self.tensors.retain(|(n, _)| n != name);
        assert_ne!(before, self.tensors.len(), "no tensor {name}");
        self
    }

    /// The GGUF file's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let metadata: Vec<(&str, &Value)> =
            self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> =
            self.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut cursor = Cursor::new(Vec::new());
        gguf_file::write(&mut cursor, &metadata, &tensors).expect("write gguf");
        cursor.into_inner()
    }

    /// Parses the bytes as an in-memory GGUF file.
    pub fn open(&self) -> models::Result<GgufFile> {
        open_gguf_bytes(self.bytes())
    }

    /// Loads the model from the bytes.
    pub fn load(&self, mode: WeightMode) -> models::Result<LoadedModel> {
        load_gguf_bytes(self.bytes(), mode)
    }
}

/// Parses GGUF bytes held in memory.
pub fn open_gguf_bytes(bytes: Vec<u8>) -> models::Result<GgufFile> {
    GgufFile::from_reader("mem.gguf".into(), Box::new(Cursor::new(bytes)))
}

/// Loads a model from GGUF bytes held in memory.
pub fn load_gguf_bytes(bytes: Vec<u8>, mode: WeightMode) -> models::Result<LoadedModel> {
    let mut file = open_gguf_bytes(bytes)?;
    models::load_gguf(&mut file, mode, &Device::Cpu, Path::new("mem.gguf"))
}

/// Dense f32 weights.
pub const F32: WeightMode = WeightMode::Dense(DType::F32);

/// `(1, n)` u32 tensor of token ids.
pub fn ids(tokens: &[u32]) -> Tensor {
    Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// Logits of the last token of `tokens` run in one forward over a fresh cache.
pub fn last_logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache();
    forward_vec(model, &mut cache, tokens)
}

/// One forward of `tokens` over `cache` (no hook), logits of the last token as a vector.
pub fn forward_vec(model: &Model, cache: &mut ModelCache, tokens: &[u32]) -> Vec<f32> {
    let logits = model.forward(&ids(tokens), cache, None).expect("forward");
    assert_eq!(logits.dims(), &[1, model.config().vocab_size]);
    logits.squeeze(0).unwrap().to_vec1().unwrap()
}

/// Largest absolute element-wise difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Largest absolute value.
pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().map(|x| x.abs()).fold(0.0, f32::max)
}

/// A tensor's elements as a flat f32 vector.
pub fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}
