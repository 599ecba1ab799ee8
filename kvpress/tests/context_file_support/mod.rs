//! What the context-file tests share: the default model (loaded once per test binary), a tiny
//! compressed context, answers, and taking a file apart and sealing it again with fresh
//! checksums (so a test can change one header field and reach the check behind the
//! checksums).
//!
//! Included by each context-file test: `mod context_file_support;`.

// Each test target uses a part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use kvpress::candle::Device;
use kvpress::core::press::{press_from_toml, Press};
use kvpress::hooks::context_file::{
    sha256_hex, ContextHeader, StoredDtype, TensorRecord, HEADER_KEY, HEADER_SHA256_KEY,
};
use kvpress::hooks::{ContextSession, PromptSplit};
use kvpress::models::{load_model, GenerationConfig, LoadedModel, Sampling};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// A short context (37 tokens with the chat template and its system prompt).
pub const TINY_CONTEXT: &str = "The special magic number for ocean is 7194.";
/// The question the tests ask.
pub const QUESTION: &str = "What is the special magic number for ocean?";

/// The default model, loaded once per test binary.
pub fn model() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| load(&default_path()))
}

/// The default model's path (fetched with `scripts/fetch-model.sh`).
pub fn default_path() -> std::path::PathBuf {
    kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"))
}

/// The model at `path`, quantized as by default.
pub fn load(path: &Path) -> LoadedModel {
    load_model(path, None, &Device::Cpu).expect("the model loads")
}

/// The press of a TOML config.
pub fn press(config: &str) -> Box<dyn Press> {
    press_from_toml(config).unwrap()
}

/// `context` compressed by `press` on `model`, with its ids.
pub fn compress(
    model: &LoadedModel,
    context: &str,
    press: &dyn Press,
) -> (ContextSession, Vec<u32>) {
    let ids = PromptSplit::context_ids(model, context).unwrap();
    let (session, _) = ContextSession::compress(&model.model, &ids, press, &[]).unwrap();
    (session, ids)
}

/// A greedy answer of at most 16 tokens to [`QUESTION`].
pub fn answer(model: &LoadedModel, session: &mut ContextSession) -> Vec<u32> {
    let config = GenerationConfig {
        max_new_tokens: 16,
        sampling: Sampling::Greedy,
    };
    kvpress::hooks::pipeline::answer_question(model, session, QUESTION, &config, &mut |_| Ok(()))
        .unwrap()
        .tokens
}

/// One tensor of a file, owned.
#[derive(Debug, Clone)]
pub struct Part {
    /// Its name.
    pub name: String,
    /// Its safetensors dtype.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its stored bytes.
    pub bytes: Vec<u8>,
}

/// A file taken apart: its metadata, its header and its tensors.
#[derive(Debug, Clone)]
pub struct Parts {
    /// The metadata (format, version, header, header checksum).
    pub metadata: HashMap<String, String>,
    /// The parsed header.
    pub header: ContextHeader,
    /// The tensors.
    pub tensors: Vec<Part>,
}

impl Parts {
    /// `bytes` taken apart.
    pub fn of(bytes: &[u8]) -> Self {
        let (_, metadata) = SafeTensors::read_metadata(bytes).unwrap();
        let metadata = metadata.metadata().clone().unwrap();
        let header = serde_json::from_str(&metadata[HEADER_KEY]).unwrap();
        let file = SafeTensors::deserialize(bytes).unwrap();
        let tensors = file
            .tensors()
            .into_iter()
            .map(|(name, view)| Part {
                name,
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                bytes: view.data().to_vec(),
            })
            .collect();
        Self {
            metadata,
            header,
            tensors,
        }
    }

    /// The tensor `name`.
    pub fn tensor(&mut self, name: &str) -> &mut Part {
        self.tensors.iter_mut().find(|t| t.name == name).unwrap()
    }

    /// The file again, with the header's tensor records and both checksums recomputed from
    /// what the parts hold now (a tensor of another dtype than a cache holds is recorded as
    /// f32).
    pub fn seal(&self) -> Vec<u8> {
        let mut header = self.header.clone();
        header.tensors = self
            .tensors
            .iter()
            .map(|t| {
                let record = TensorRecord {
                    dtype: StoredDtype::from_safetensors(t.dtype).unwrap_or(StoredDtype::F32),
                    shape: t.shape.clone(),
                    sha256: sha256_hex(&t.bytes),
                };
                (t.name.clone(), record)
            })
            .collect();
        let text = serde_json::to_string(&header).unwrap();
        self.seal_text(&text)
    }

    /// The file with `text` as its header (and its checksum), the tensors as they are.
    pub fn seal_text(&self, text: &str) -> Vec<u8> {
        let mut metadata = self.metadata.clone();
        metadata.insert(HEADER_SHA256_KEY.to_string(), sha256_hex(text.as_bytes()));
        metadata.insert(HEADER_KEY.to_string(), text.to_string());
        let views = self.tensors.iter().map(|t| {
            let view = TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap();
            (t.name.clone(), view)
        });
        safetensors::serialize(views, Some(metadata)).unwrap()
    }
}
