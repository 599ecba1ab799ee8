//! The chat template of a Hugging Face folder, looked for where transformers 5 looks.
//!
//! transformers 5 (`PreTrainedTokenizerBase._from_pretrained`) reads `chat_template.jinja` as
//! the default template and `additional_chat_templates/<name>.jinja` as named ones (a file named
//! `default.jinja` there replaces `chat_template.jinja`). When any of these files exists, the
//! `chat_template` entry of `tokenizer_config.json` is not used, even if it differs; only
//! without them is that entry read (a string, or a list of `{name, template}` of which
//! `default` is used). `chat_template.json` is read by transformers' multimodal processors only,
//! not by tokenizers, so it is not read here either. The special tokens the template may use
//! (`bos_token`, `eos_token`) come from `tokenizer_config.json`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::chat::ChatTemplate;
use crate::hf_config::read_json;
use crate::{Error, Result};

/// The default template's file.
const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
/// The folder of named templates.
const CHAT_TEMPLATE_DIR: &str = "additional_chat_templates";

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

/// The chat template of the Hugging Face folder `folder`, or `None` if it has none.
///
/// Looked for as transformers 5 does: `chat_template.jinja` (or
/// `additional_chat_templates/default.jinja`) first, and only when no `.jinja` template file
/// exists, the `chat_template` entry of `tokenizer_config.json` (a string, or the template named
/// `default` in a list). `chat_template.json` is not read (transformers reads it for multimodal
/// processors only). `bos_token` and `eos_token` come from `tokenizer_config.json`.
///
/// Errors name the file: unreadable files, invalid JSON, templates that do not parse, and
/// named templates without a default.
pub fn chat_template_from_folder(folder: &Path) -> Result<Option<ChatTemplate>> {
    let config: TokenizerConfig =
        read_json(&folder.join("tokenizer_config.json"))?.unwrap_or_default();
    let source = match template_files(folder)? {
        Some(source) => Some(source),
        None => config_template(config.chat_template)?,
    };
    let Some(source) = source else {
        return Ok(None);
    };
    let bos = config.bos_token.as_ref().map_or("", TokenField::text);
    let eos = config.eos_token.as_ref().map_or("", TokenField::text);
    ChatTemplate::new(source, bos, eos).map(Some)
}

/// The default template from `chat_template.jinja` / `additional_chat_templates/`, or `None`
/// when neither exists.
fn template_files(folder: &Path) -> Result<Option<String>> {
    let mut templates = BTreeMap::new();
    let main = folder.join(CHAT_TEMPLATE_FILE);
    if main.is_file() {
        templates.insert("default".to_string(), read_text(&main)?);
    }
    let dir = folder.join(CHAT_TEMPLATE_DIR);
    if dir.is_dir() {
        let entries = std::fs::read_dir(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| Error::Io {
                    path: dir.clone(),
                    source,
                })?
                .path();
            if path.extension().is_some_and(|e| e == "jinja") && path.is_file() {
                let name = path.file_stem().unwrap_or_default().to_string_lossy();
                templates.insert(name.into_owned(), read_text(&path)?);
            }
        }
    }
    if templates.is_empty() {
        return Ok(None);
    }
    match templates.remove("default") {
        Some(source) => Ok(Some(source)),
        None => Err(Error::ChatTemplate(format!(
            "{} holds the templates {:?} but there is no default one: put it in {} \
             (as transformers expects)",
            dir.display(),
            templates.keys().collect::<Vec<_>>(),
            main.display()
        ))),
    }
}

/// The default template from `tokenizer_config.json`'s `chat_template`.
fn config_template(field: Option<ChatTemplateField>) -> Result<Option<String>> {
    match field {
        None => Ok(None),
        Some(ChatTemplateField::One(source)) => Ok(Some(source)),
        Some(ChatTemplateField::Named(list)) => list
            .into_iter()
            .find(|t| t.name == "default")
            .map(|t| Some(t.template))
            .ok_or_else(|| {
                Error::ChatTemplate("tokenizer_config.json has no template named `default`".into())
            }),
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
