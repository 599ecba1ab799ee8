//! The text-in, text-out API: load a model once ([`Pipeline`]), compress a context with any
//! press ([`Pipeline::compress`]), then ask it questions ([`CompressedContext::ask`]); the cache
//! rewinds after each answer, so every question sees the same compressed context.
//!
//! ```no_run
//! use kvpress_hooks::{AnswerOptions, Pipeline};
//!
//! let pipe = Pipeline::load_default()?;
//! let press = kvpress_core::press::press_from_toml("press = \"knorm\"\ncompression_ratio = 0.5")?;
//! let ctx = pipe.compress("a long document ...", press.as_ref())?;
//! println!("{}", ctx.ask("What is it about?")?);
//! let options = AnswerOptions { max_new_tokens: 200, ..Default::default() };
//! println!("{}", ctx.ask_with("Summarise it.", options)?);
//! ctx.save("doc.kvp")?;
//! let again = pipe.load_context("doc.kvp")?;
//! # Ok::<(), kvpress_hooks::Error>(())
//! ```

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use candle_core::Device;
use kvpress_core::press::{press_clone, Press};
use kvpress_models::{
    default_model, load_model, GenerationConfig, KvStorage, LoadedModel, Sampling, StopReason,
    StreamDecoder, WeightMode,
};

use crate::front_end::{check_press, FrontEnd};
use crate::{CompressionReport, ContextSession, Error, PromptSplit, Result};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Keep GGUF weights quantized, or dequantize them to a dtype; `None`: quantized for GGUF,
    /// f32 for Hugging Face folders.
    pub weights: Option<WeightMode>,
    /// How the KV cache stores keys and values (f32, f16, bf16, q8, q4); `None`: the model's
    /// dtype.
    pub kv_dtype: Option<KvStorage>,
    /// Where the model runs.
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            weights: None,
            kv_dtype: None,
            device: Device::Cpu,
        }
    }
}

/// A loaded model with its tokenizer and chat template, ready to compress contexts. Cloning is
/// cheap (the model is shared).
#[derive(Debug, Clone)]
pub struct Pipeline {
    model: Arc<LoadedModel>,
}

impl Pipeline {
    /// Loads a GGUF file or a Hugging Face folder.
    pub fn load(path: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        let mut loaded = load_model(path.as_ref(), options.weights, &options.device)?;
        if let Some(storage) = options.kv_dtype {
            loaded.model.set_kv_storage(storage)?;
        }
        Ok(Self::from_loaded(loaded))
    }

    /// Loads the default model (SmolLM2-135M-Instruct, fetched with `scripts/fetch-model.sh`).
    pub fn load_default() -> Result<Self> {
        Self::load(default_model::require()?, LoadOptions::default())
    }

    /// A pipeline over an already loaded model.
    pub fn from_loaded(model: LoadedModel) -> Self {
        Self {
            model: Arc::new(model),
        }
    }

    /// The model, tokenizer and chat template, for the token-level API.
    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    /// Prefills `context` (as the user turn of the chat template, as kvpress does) and
    /// compresses it with `press`.
    pub fn compress(&self, context: &str, press: &dyn Press) -> Result<CompressedContext> {
        check_press(FrontEnd::Run, press)?;
        if press.describe().needs_question {
            return Err(Error::PressNotSupported {
                press: kvpress_core::press::press_name(press),
                front_end: "Pipeline::compress",
                reason: "it compresses the context for one question, and a compressed context \
                         answers many; use `kvpress_hooks::run::run` (or `kvpress run`), which \
                         compresses the context anew for each question"
                    .to_string(),
            });
        }
        if context.trim().is_empty() {
            return Err(Error::InvalidInput("the context is empty".to_string()));
        }
        let context_ids = PromptSplit::context_ids(&self.model, context)?;
        let (session, report) =
            ContextSession::compress(&self.model.model, &context_ids, press, &[])?;
        Ok(CompressedContext {
            model: Arc::clone(&self.model),
            session: Mutex::new(session),
            report: Some(report),
            context_ids,
            press: press_clone(press)?,
        })
    }

    /// Loads a context saved with [`CompressedContext::save`] (or `kvpress compress`); the file
    /// must have been made with this model (same weight bytes) and is checked whole first
    /// (checksums, header against the model: [`crate::context_file`]). Its cache takes the
    /// pipeline's KV-cache dtype ([`LoadOptions::kv_dtype`]), converted if stored in another.
    pub fn load_context(&self, path: impl AsRef<Path>) -> Result<CompressedContext> {
        let (session, header) = crate::context_file::load(path.as_ref(), &self.model)?;
        let press = kvpress_core::press::press_from_value(header.press)?;
        Ok(CompressedContext {
            model: Arc::clone(&self.model),
            session: Mutex::new(session),
            report: None,
            context_ids: header.context_ids,
            press,
        })
    }
}

/// How to answer a question.
pub struct AnswerOptions<'a> {
    /// Most tokens to generate (the end-of-sequence token included).
    pub max_new_tokens: usize,
    /// Greedy (the default) or nucleus sampling.
    pub sampling: Sampling,
    /// Called with each piece of text as soon as it is complete (streaming); `None`: the text
    /// comes back at the end only.
    pub on_text: Option<&'a mut dyn FnMut(&str)>,
}

impl Default for AnswerOptions<'_> {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            sampling: Sampling::Greedy,
            on_text: None,
        }
    }
}

impl fmt::Debug for AnswerOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerOptions")
            .field("max_new_tokens", &self.max_new_tokens)
            .field("sampling", &self.sampling)
            .field("streaming", &self.on_text.is_some())
            .finish()
    }
}

/// One answer: its text (what `Display` prints) and how it was produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The generated text, special tokens removed.
    pub text: String,
    /// The generated token ids.
    pub tokens: Vec<u32>,
    /// Why generation stopped.
    pub stop_reason: StopReason,
    /// Seconds for the question's prefill and the decoding.
    pub seconds: f64,
    /// Layer compressions a decode-time press made while answering (0 for other presses, or
    /// when the question's forward and one forward per generated token were fewer than the
    /// press's `compression_interval`).
    pub decode_compressions: usize,
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text.trim())
    }
}

/// A compressed context that answers questions; each answer rewinds the cache to the context.
/// Questions are answered one at a time (the context is locked while one is answered).
#[derive(Debug)]
pub struct CompressedContext {
    model: Arc<LoadedModel>,
    session: Mutex<ContextSession>,
    report: Option<CompressionReport>,
    context_ids: Vec<u32>,
    press: Box<dyn Press>,
}

impl CompressedContext {
    /// Answers `question` greedily with at most 256 tokens; returns the text.
    pub fn ask(&self, question: &str) -> Result<String> {
        Ok(self.ask_with(question, AnswerOptions::default())?.text)
    }

    /// Answers `question` as `options` say.
    pub fn ask_with(&self, question: &str, options: AnswerOptions<'_>) -> Result<Answer> {
        let config = GenerationConfig {
            max_new_tokens: options.max_new_tokens,
            sampling: options.sampling,
        };
        let mut on_text = options.on_text;
        let mut stream = StreamDecoder::default();
        let tokenizer = &self.model.tokenizer;
        let mut session = self.session()?;
        let start = Instant::now();
        let output = answer_question(&self.model, &mut session, question, &config, &mut |id| {
            if let Some(on_text) = on_text.as_mut() {
                if let Some(piece) = stream.push(tokenizer, id)? {
                    on_text(&piece);
                }
            }
            Ok(())
        })?;
        Ok(Answer {
            text: tokenizer.decode(&output.tokens, true)?,
            tokens: output.tokens,
            stop_reason: output.stop_reason,
            seconds: start.elapsed().as_secs_f64(),
            decode_compressions: session.last_answer_compressions(),
        })
    }

    /// Saves the compressed context atomically, keys and values in the cache's dtype, with
    /// checksums (checked against the model when loaded again); returns the bytes written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<u64> {
        let session = self.session()?;
        crate::context_file::save(
            path.as_ref(),
            &self.model,
            &session,
            &self.context_ids,
            self.press.as_ref(),
        )
    }

    /// What compressing did (kept fraction, bytes, timings); `None` for a loaded context.
    pub fn report(&self) -> Option<&CompressionReport> {
        self.report.as_ref()
    }

    /// Bytes the compressed KV cache holds.
    pub fn kv_bytes(&self) -> Result<usize> {
        Ok(self.session()?.cache().bytes_reserved())
    }

    /// The context's token ids.
    pub fn context_ids(&self) -> &[u32] {
        &self.context_ids
    }

    /// The press that compressed the context.
    pub fn press(&self) -> &dyn Press {
        self.press.as_ref()
    }

    fn session(&self) -> Result<MutexGuard<'_, ContextSession>> {
        self.session.lock().map_err(|_| {
            Error::InvalidInput(
                "an earlier answer panicked while it held this context; compress it again"
                    .to_string(),
            )
        })
    }
}

/// Puts `question` to `session`'s context the way kvpress's pipeline does (the question, then
/// the chat template's assistant prefix) and generates; the cache is rewound afterwards. The
/// one path `kvpress run`, the [`Pipeline`] and saved contexts answer through.
pub fn answer_question(
    model: &LoadedModel,
    session: &mut ContextSession,
    question: &str,
    config: &GenerationConfig,
    on_token: &mut dyn FnMut(u32) -> kvpress_models::Result<()>,
) -> Result<kvpress_models::GenerationOutput> {
    let suffix = PromptSplit::question_suffix(model)?;
    let question_ids = model
        .tokenizer
        .encode(&format!("{question}{suffix}"), false)?;
    session.answer(
        &model.model,
        &question_ids,
        model.tokenizer.eos_ids(),
        config,
        on_token,
    )
}
