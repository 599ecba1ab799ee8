//! Loading a model, its tokenizer and its chat template from a GGUF file or a Hugging Face folder.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::Deserialize;

use crate::chat::ChatTemplate;
use crate::config::HfConfig;
use crate::gguf::GgufFile;
use crate::model::Model;
use crate::safetensors::SafetensorsFiles;
use crate::tokenizer::TextTokenizer;
use crate::weights::{WeightLoader, WeightMode};
use crate::{Error, Result};

/// A model with everything needed to turn text into tokens and back.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The decoder.
    pub model: Model,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Its chat template, if the files carry one.
    pub chat_template: Option<ChatTemplate>,
    /// Where it was loaded from.
    pub path: PathBuf,
}

/// Loads a GGUF file (`path` is a file) or a Hugging Face folder (`path` is a directory).
///
/// `mode` defaults to [`WeightMode::Quantized`] for GGUF and `Dense(F32)` for folders;
/// quantized mode on a folder is an error.
pub fn load_model(path: &Path, mode: Option<WeightMode>, device: &Device) -> Result<LoadedModel> {
    if !path.exists() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    if path.is_dir() {
        load_hf_folder(path, mode.unwrap_or(WeightMode::Dense(DType::F32)), device)
    } else {
        let mut file = GgufFile::open(path)?;
        load_gguf(
            &mut file,
            mode.unwrap_or(WeightMode::Quantized),
            device,
            path,
        )
    }
}

/// Loads a model from an opened GGUF file (also used with in-memory files in tests).
pub fn load_gguf(
    file: &mut GgufFile,
    mode: WeightMode,
    device: &Device,
    path: &Path,
) -> Result<LoadedModel> {
    let config = file.model_config()?;
    let tokenizer = TextTokenizer::from_gguf(file)?;
    let chat_template = match file.get_str("tokenizer.chat_template") {
        Some(source) => {
            let token_text = |id: Option<u32>| {
                id.and_then(|id| tokenizer.inner().id_to_token(id))
                    .unwrap_or_default()
            };
            let bos = token_text(
                file.get_usize("tokenizer.ggml.bos_token_id")?
                    .map(|i| i as u32),
            );
            let eos = token_text(tokenizer.eos_ids().first().copied());
            Some(ChatTemplate::new(source, bos, eos)?)
        }
        None => None,
    };
    let mut source = file.tensor_source(&config, device);
    let mut weights = WeightLoader::new(&mut source, mode, device);
    let model = Model::load(config, &mut weights, device)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        path: path.to_path_buf(),
    })
}

/// `tokenizer_config.json` fields that matter here.
#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    chat_template: Option<ChatTemplateField>,
    #[serde(default)]
    bos_token: Option<TokenField>,
    #[serde(default)]
    eos_token: Option<TokenField>,
}

/// A chat template: a string, or a list of named templates (the one named `default` is used).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ChatTemplateField {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

/// A special token, written as a string or as `{"content": ...}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TokenField {
    Text(String),
    Object { content: String },
}

impl TokenField {
    fn text(&self) -> &str {
        match self {
            Self::Text(t) | Self::Object { content: t } => t,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct GenerationConfig {
    #[serde(default)]
    eos_token_id: Option<crate::config::TokenIds>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::InvalidModelFile {
            path: path.to_path_buf(),
            message: format!("invalid JSON: {e}"),
        })
}

fn load_hf_folder(folder: &Path, mode: WeightMode, device: &Device) -> Result<LoadedModel> {
    if mode == WeightMode::Quantized {
        return Err(Error::InvalidInput(
            "quantized weights are only available for GGUF files; use f32, f16 or bf16 for a Hugging Face folder".into(),
        ));
    }
    let config_path = folder.join("config.json");
    let hf: HfConfig = read_json(&config_path)?.ok_or_else(|| Error::InvalidModelFile {
        path: config_path.clone(),
        message: "missing: a Hugging Face model folder needs config.json".into(),
    })?;
    let config = hf.to_model_config()?;
    let generation: GenerationConfig =
        read_json(&folder.join("generation_config.json"))?.unwrap_or_default();
    let eos_ids = generation
        .eos_token_id
        .or(hf.eos_token_id.clone())
        .map(|ids| ids.to_vec())
        .unwrap_or_default();
    let bos_id = hf
        .bos_token_id
        .as_ref()
        .and_then(|ids| ids.to_vec().first().copied());
    let tokenizer_path = folder.join("tokenizer.json");
    if !tokenizer_path.exists() {
        return Err(Error::InvalidModelFile {
            path: tokenizer_path,
            message: "missing: a Hugging Face model folder needs tokenizer.json".into(),
        });
    }
    let tokenizer = TextTokenizer::from_file(&tokenizer_path, bos_id, eos_ids)?;
    let tokenizer_config: TokenizerConfig =
        read_json(&folder.join("tokenizer_config.json"))?.unwrap_or_default();
    let chat_template = match tokenizer_config.chat_template {
        Some(field) => {
            let source = match field {
                ChatTemplateField::One(s) => s,
                ChatTemplateField::Named(list) => list
                    .into_iter()
                    .find(|t| t.name == "default")
                    .map(|t| t.template)
                    .ok_or_else(|| {
                        Error::ChatTemplate(
                            "tokenizer_config.json has no template named `default`".into(),
                        )
                    })?,
            };
            let bos = tokenizer_config
                .bos_token
                .as_ref()
                .map_or("", TokenField::text);
            let eos = tokenizer_config
                .eos_token
                .as_ref()
                .map_or("", TokenField::text);
            Some(ChatTemplate::new(source, bos, eos)?)
        }
        None => None,
    };
    let mut files = SafetensorsFiles::open(folder, device)?;
    let mut weights = WeightLoader::new(&mut files, mode, device);
    let model = Model::load(config, &mut weights, device)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        path: folder.to_path_buf(),
    })
}
