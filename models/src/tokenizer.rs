//! Text tokenizers: from a GGUF file's metadata or a Hugging Face `tokenizer.json`.
//!
//! GGUF byte-level BPE tokenizers are built here rather than with candle's `from_gguf`, which adds
//! a prefix space that models such as SmolLM2 do not use (their GGUF says
//! `tokenizer.ggml.add_space_prefix = false`).

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::gguf::{integer_value, GgufFile};
use crate::{Error, Result};

/// Pre-tokenizer regex of Qwen2 GGUFs (`tokenizer.ggml.pre = "qwen2"`).
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Pre-tokenizer regex of Llama 3 GGUFs (`llama-bpe`, `llama3`, `smaug-bpe`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer plus the special ids generation needs.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    bos_id: Option<u32>,
    add_bos: bool,
    eos_ids: Vec<u32>,
}

impl TextTokenizer {
    /// Wraps a `tokenizers` tokenizer; `eos_ids` end generation.
    pub fn new(inner: Tokenizer, bos_id: Option<u32>, add_bos: bool, eos_ids: Vec<u32>) -> Self {
        Self {
            inner,
            bos_id,
            add_bos,
            eos_ids,
        }
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path, bos_id: Option<u32>, eos_ids: Vec<u32>) -> Result<Self> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("cannot load {}: {e}", path.display())))?;
        // tokenizer.json carries its own post-processor for BOS, so none is added here.
        Ok(Self::new(inner, bos_id, false, eos_ids))
    }

    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let model = file.get_str("tokenizer.ggml.model").unwrap_or("<absent>");
        if model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "tokenizer model `{model}` in the GGUF is not supported (only byte-level BPE, `gpt2`); \
                 load the model from a Hugging Face folder with tokenizer.json instead"
            )));
        }
        let tokens = string_array(file, "tokenizer.ggml.tokens")?;
        let merges = string_array(file, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        Error::Tokenizer(format!("malformed merge `{m}` (expected `a b`)"))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| Error::Tokenizer(format!("cannot build BPE: {e}")))?;
        let mut inner = Tokenizer::new(bpe);
        let add_prefix_space = matches!(
            file.get("tokenizer.ggml.add_space_prefix"),
            Some(candle_core::quantized::gguf_file::Value::Bool(true))
        );
        inner.with_pre_tokenizer(Some(pre_tokenizer(
            file.get_str("tokenizer.ggml.pre"),
            add_prefix_space,
        )?));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        let token_types: Vec<i128> = match file.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()?
                .iter()
                .map(integer_value)
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    Error::Tokenizer("`tokenizer.ggml.token_type` holds a non-integer".into())
                })?,
            None => vec![1; tokens.len()],
        };
        // Control (3), unknown (2) and user-defined (4) tokens are matched whole in the text.
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, &t)| matches!(t, 2..=4))
            .map(|(text, &t)| AddedToken::from(text.clone(), t != 4))
            .collect();
        inner
            .add_special_tokens(added)
            .map_err(|e| Error::Tokenizer(format!("cannot add special tokens: {e}")))?;

        let bos_id = file
            .get_usize("tokenizer.ggml.bos_token_id")?
            .map(|id| id as u32);
        let add_bos = matches!(
            file.get("tokenizer.ggml.add_bos_token"),
            Some(candle_core::quantized::gguf_file::Value::Bool(true))
        );
        let eos_ids = file
            .get_usize("tokenizer.ggml.eos_token_id")?
            .map(|id| id as u32)
            .into_iter()
            .collect();
        Ok(Self::new(inner, bos_id, add_bos, eos_ids))
    }

    /// Token ids of `text`. Special-token text (e.g. `<|im_start|>`) maps to its id; a BOS is
    /// prepended only when `add_bos` and the model asks for one.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("cannot encode: {e}")))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_bos && self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// The BOS id (when the tokenizer has one) followed by the tokens of `text`, whatever the
    /// model's own BOS flag: what transformers' `tokenizer(text)` gives for the models kvpress's
    /// reference ran (SmolLM2's GGUF says `add_bos_token = false`, and transformers still
    /// prepends its BOS); presses calibrated on texts (DuoAttention) tokenize them so.
    pub fn encode_with_bos(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("cannot encode: {e}")))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        ids.extend(self.bos_id);
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("cannot decode: {e}")))
    }

    /// Ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Replaces the ids that end generation.
    pub fn set_eos_ids(&mut self, eos_ids: Vec<u32>) {
        self.eos_ids = eos_ids;
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// Incremental detokenizer for streaming: yields the new text after each token, holding back
/// incomplete UTF-8 sequences. Only the tokens since the last emitted text (plus a few before
/// them, for context-dependent decoding such as byte-level merges) are decoded at each step, so
/// streaming a long answer costs time linear in its length.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    /// Start of the tokens decoded for context.
    prefix_offset: usize,
    /// End of the tokens whose text was emitted.
    read_offset: usize,
}

impl StreamDecoder {
    /// Adds a token; returns text that became complete.
    pub fn push(&mut self, tokenizer: &TextTokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let emitted = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let text = tokenizer.decode(&self.ids[self.prefix_offset..], true)?;
        if text.ends_with('\u{FFFD}')
            || text.len() <= emitted.len()
            || !text.is_char_boundary(emitted.len())
        {
            return Ok(None);
        }
        let new = text[emitted.len()..].to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(Some(new))
    }
}

/// A token callback for [`fn@crate::generate`] that writes the text of each token to `out` as soon
/// as it is complete (flushing, so a terminal shows it at once).
pub fn print_tokens<'a>(
    tokenizer: &'a TextTokenizer,
    mut out: impl std::io::Write + 'a,
) -> impl FnMut(u32) -> Result<()> + 'a {
    let mut stream = StreamDecoder::default();
    move |id| {
        if let Some(text) = stream.push(tokenizer, id)? {
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(Error::Output)?;
        }
        Ok(())
    }
}

fn string_array(file: &GgufFile, key: &str) -> Result<Vec<String>> {
    let value = file
        .get(key)
        .ok_or_else(|| Error::Tokenizer(format!("GGUF metadata has no `{key}`")))?;
    value
        .to_vec()
        .map_err(|e| Error::Tokenizer(format!("`{key}` is not an array: {e}")))?
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|e| Error::Tokenizer(format!("`{key}` holds a non-string: {e}")))
        })
        .collect()
}

/// The pre-tokenizer for a GGUF `tokenizer.ggml.pre` name.
fn pre_tokenizer(pre: Option<&str>, add_prefix_space: bool) -> Result<PreTokenizerWrapper> {
    let pattern = match pre {
        Some("qwen2") => Some(QWEN2_PATTERN),
        Some("llama3" | "llama-bpe" | "smaug-bpe") => Some(LLAMA3_PATTERN),
        _ => None,
    };
    Ok(match pattern {
        // GPT-2's own regex (also used by transformers when it converts SmolLM2's GGUF).
        None => ByteLevel::new(add_prefix_space, true, true).into(),
        Some(pattern) => {
            let split = Split::new(
                SplitPattern::Regex(pattern.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| Error::Tokenizer(format!("bad pre-tokenizer regex: {e}")))?;
            Sequence::new(vec![
                split.into(),
                ByteLevel::new(add_prefix_space, true, false).into(),
            ])
            .into()
        }
    })
}
