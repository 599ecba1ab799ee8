//! `kvpress calibrate-queries`: runs the model over calibration texts and writes the query
//! statistics that `qfilter` and `expected_attention_stats` read (kvpress downloads them from
//! the Hugging Face hub instead). Each text is tokenized as plain text (no chat template, as
//! kvpress's `collect_queries` does) and cut into sequences of at most `--max-tokens` tokens,
//! each starting with the model's BOS when it adds one; every sequence runs from an empty cache
//! through a [`QueryCollector`] hook (see `presses_query_stats::calibration`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use kvpress::models::{model_sha256, sha256_hex};
use kvpress::presses::query_stats::file::CalibrationText;
use kvpress::presses::query_stats::{CalibrationSource, ModelIdentity, ModelShape, QueryCollector};

use crate::cli::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Calibration text file (plain UTF-8 text); repeat the option for several files.
    #[arg(long = "text", required = true)]
    texts: Vec<PathBuf>,
    /// First tokens of each sequence left out of the statistics (attention sinks, whose
    /// queries are outliers; kvpress's `n_sink`).
    #[arg(long, default_value_t = 4, value_parser = crate::values::at_least::<0>)]
    n_sink: usize,
    /// Longest sequence, in tokens (BOS included): longer texts are cut into several
    /// (kvpress's `sample_seq_len` is 1000, in characters).
    #[arg(long, default_value_t = 1000, value_parser = crate::values::at_least::<2>)]
    max_tokens: usize,
    /// Output file (safetensors), e.g. query-stats.safetensors; written atomically (a
    /// temporary file renamed onto it). It must not be a --text or the --model file.
    #[arg(long)]
    out: PathBuf,
}

/// A text file's bytes as UTF-8 text that holds more than spaces (the `--text` files of
/// `calibrate-queries` and `train-kvzap`).
pub(crate) fn read_calibration_text(path: &Path) -> Result<(String, Vec<u8>)> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("--text {}: cannot read it", path.display()))?;
    let text = String::from_utf8(bytes.clone()).map_err(|e| {
        anyhow::anyhow!(
            "--text {}: not UTF-8 text (invalid byte at offset {}); give a plain text file",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    if text.trim().is_empty() {
        bail!(
            "--text {}: the file is empty (or only spaces and line breaks); give calibration text",
            path.display()
        );
    }
    Ok((text, bytes))
}

/// Computes the statistics and writes them to `--out`.
pub fn run(args: Args) -> Result<()> {
    let Args {
        model,
        texts,
        n_sink,
        max_tokens,
        out,
    } = args;
    if max_tokens <= n_sink {
        bail!(
            "--max-tokens {max_tokens} must be larger than --n-sink {n_sink}: the first n_sink \
             tokens of each sequence are left out of the statistics"
        );
    }
    let model_path = model.path();
    let mut inputs: Vec<(&str, &Path)> = texts.iter().map(|t| ("--text", t.as_path())).collect();
    inputs.push(("--model", model_path.as_path()));
    crate::output::check_output_file("--out", &out, &inputs)?;
    let contents = texts
        .iter()
        .map(|path| read_calibration_text(path))
        .collect::<Result<Vec<_>>>()?;

    let loaded = model.load()?;
    let config = loaded.model.config();
    if max_tokens > config.max_position_embeddings {
        bail!(
            "--max-tokens {max_tokens} is beyond the model's {} positions",
            config.max_position_embeddings
        );
    }
    let identity = ModelIdentity {
        sha256: model_sha256(&loaded.path)
            .with_context(|| format!("cannot hash the model {}", loaded.path.display()))?,
        name: loaded
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    // The BOS a plain text starts with (none when the model does not add one).
    let bos = loaded.tokenizer.encode("", true)?;
    let room = max_tokens - bos.len();
    let mut sequences: Vec<Vec<u32>> = Vec::new();
    let mut calibration_texts = Vec::new();
    for (path, (text, bytes)) in texts.iter().zip(&contents) {
        let ids = loaded.tokenizer.encode(text, false)?;
        let mut tokens = 0;
        for chunk in ids.chunks(room) {
            let sequence: Vec<u32> = bos.iter().chain(chunk).copied().collect();
            tokens += sequence.len();
            sequences.push(sequence);
        }
        calibration_texts.push(CalibrationText {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: sha256_hex(bytes),
            tokens,
        });
    }

    let shape = ModelShape {
        n_layers: config.n_layers,
        n_heads: config.n_heads,
        n_kv_heads: config.n_kv_heads,
        head_dim: config.head_dim,
    };
    let mut collector = QueryCollector::new(shape, n_sink);
    let start = Instant::now();
    let total_tokens: usize = sequences.iter().map(Vec::len).sum();
    for (i, sequence) in sequences.iter().enumerate() {
        if sequence.len() <= n_sink {
            eprintln!(
                "sequence {}/{}: {} tokens, no more than --n-sink {n_sink}: nothing to collect, \
                 skipped",
                i + 1,
                sequences.len(),
                sequence.len()
            );
            continue;
        }
        let ids = Tensor::new(sequence.as_slice(), loaded.model.device())?.unsqueeze(0)?;
        let mut cache = loaded.model.new_cache();
        loaded
            .model
            .forward(&ids, &mut cache, Some(&mut collector))
            .with_context(|| format!("sequence {} of the calibration texts", i + 1))?;
        eprintln!(
            "sequence {}/{}: {} tokens ({:.1} s so far)",
            i + 1,
            sequences.len(),
            sequence.len(),
            start.elapsed().as_secs_f64()
        );
    }
    let source = CalibrationSource {
        model: identity,
        max_tokens,
        texts: calibration_texts,
    };
    let calibration = collector.finish(&out, source)?;
    let bytes = calibration.file.to_bytes()?;
    crate::output::write_file(&out, &bytes)?;

    let n_queries = calibration.file.header.as_ref().map_or(0, |h| h.n_queries);
    println!(
        "{}: {} bytes | {} texts, {} sequences, {total_tokens} tokens, {n_queries} queries per \
         head after {n_sink} sink tokens per sequence, in {:.1} s",
        out.display(),
        bytes.len(),
        texts.len(),
        sequences.len(),
        start.elapsed().as_secs_f64()
    );
    println!(
        "query_mean ({0}, {1}, {3}), query_cov ({0}, {1}, {3}, {3}) of the pre-RoPE queries; \
         q_filters ({0}, {2}, {3}) of the post-RoPE queries",
        shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.head_dim
    );
    let per_layer: Vec<String> = calibration
        .principal_share
        .chunks(shape.n_heads)
        .map(|heads| format!("{:.2}", heads.iter().sum::<f64>() / heads.len() as f64))
        .collect();
    println!(
        "share of the post-RoPE queries' energy along each head's Q-Filter direction, mean per \
         layer: {}",
        per_layer.join(" ")
    );
    if n_queries <= shape.head_dim as u64 {
        eprintln!(
            "note: {n_queries} queries per head for {0} x {0} covariances: they are singular \
             (rank at most {1}); more text gives better statistics",
            shape.head_dim,
            n_queries.saturating_sub(1)
        );
    }
    Ok(())
}
