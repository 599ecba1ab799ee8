//! Loading a model, its tokenizer and its chat template from a GGUF file or a Hugging Face folder.
//!
//! A folder may be written by transformers 4 or 5: `config.json` is read in both layouts
//! (transformers 5 moved `rope_theta` and the RoPE scaling into `rope_parameters`; see
//! [`crate::ModelConfig::from_hf_config_file`]), and the chat template is taken from
//! `chat_template.jinja` when present, else from `tokenizer_config.json`
//! ([`chat_template_from_folder`]).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::Deserialize;

use crate::chat::ChatTemplate;
use crate::gguf::GgufFile;
pub use crate::hf_chat_template::chat_template_from_folder;
use crate::hf_config::{read_json, HfConfig, TokenIds};
use crate::model::Model;
use crate::reconstruction_prompt::ReconstructionPrompt;
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
/// quantized mode on a folder is an error. A folder needs `config.json` (transformers 4 or 5
/// layout; entries that would change the computation in a way this crate does not implement,
/// such as a scaled RoPE, are refused), `tokenizer.json` and safetensors weights; the chat
/// template comes from `chat_template.jinja` or `tokenizer_config.json`, the end-of-sequence
/// ids from `generation_config.json` or `config.json`.
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
    let mut model = Model::load(config, &mut weights, device)?;
    if let Ok(prompt) = ReconstructionPrompt::new(&tokenizer, chat_template.as_ref()) {
        model.set_reconstruction_prompt(prompt);
    }
    model.set_tokenizer(tokenizer.clone());
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        path: path.to_path_buf(),
    })
}

#[derive(Debug, Default, Deserialize)]
struct GenerationConfig {
    #[serde(default)]
    eos_token_id: Option<TokenIds>,
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
    let chat_template = chat_template_from_folder(folder)?;
    let mut files = SafetensorsFiles::open(folder, device)?;
    let mut weights = WeightLoader::new(&mut files, mode, device);
    let mut model = Model::load(config, &mut weights, device)?;
    files.check_all_used()?;
    if let Ok(prompt) = ReconstructionPrompt::new(&tokenizer, chat_template.as_ref()) {
        model.set_reconstruction_prompt(prompt);
    }
    model.set_tokenizer(tokenizer.clone());
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        path: folder.to_path_buf(),
    })
}
