//! `kvpress train-kvzap`: fits the KVzap surrogates (kvpress's `kvzap/train.py`) for the loaded
//! model on local text. The texts are cut into samples of `--sample-tokens` tokens; each sample
//! is fed as a chat where the user gives it and asks "Repeat the previous context exactly." and
//! the assistant repeats it, and every layer's KVzip+ scores of the first copy are the targets
//! (`presses_kvzap::targets`). `--tokens-per-sample` random tokens of each sample become rows;
//! the last `--test-fraction` of the samples are held out, and both surrogates (ridge and MLP)
//! are scored on them (R², Spearman rank correlation per layer and head). Both are written to
//! `--out`, with those figures in the file's header.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use kvpress::core::{AttentionHook, LayerContext};
use kvpress::models::{model_sha256, ChatMessage, LoadedModel};
use kvpress::presses::kvzap::fit::{self, MlpTraining};
use kvpress::presses::kvzap::surrogate::FORMAT_VERSION;
use kvpress::presses::kvzap::{SurrogateHeader, SurrogateKind, Surrogates};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::cli::ModelArgs;

/// kvpress's repeat prompt.
const REPEAT: &str = "\n\nRepeat the previous context exactly.";

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Training text file (plain UTF-8); repeat the option for several files.
    #[arg(long = "text", required = true)]
    texts: Vec<PathBuf>,
    /// Tokens per sample (kvpress keeps samples of 750 to 1250 tokens).
    #[arg(long, default_value_t = 1000, value_parser = crate::values::at_least::<16>)]
    sample_tokens: usize,
    /// Random tokens of each sample used as rows (kvpress: 500).
    #[arg(long, default_value_t = 200, value_parser = crate::values::at_least::<1>)]
    tokens_per_sample: usize,
    /// Share of the samples (the last ones) held out to score the surrogates.
    #[arg(long, default_value_t = 0.1)]
    test_fraction: f64,
    /// The MLP's hidden width (kvpress: 512).
    #[arg(long, default_value_t = 512, value_parser = crate::values::at_least::<1>)]
    hidden_dim: usize,
    /// MLP training epochs (kvpress: 15).
    #[arg(long, default_value_t = 15, value_parser = crate::values::at_least::<1>)]
    epochs: usize,
    /// MLP learning rate (kvpress: 5e-3).
    #[arg(long, default_value_t = 5e-3)]
    lr: f64,
    /// MLP batch size (kvpress: 512).
    #[arg(long, default_value_t = 512, value_parser = crate::values::at_least::<1>)]
    batch_size: usize,
    /// Seed of the sampled tokens, the MLP's initial weights and its batches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file (safetensors); written atomically. It must not be a --text or the --model.
    #[arg(long)]
    out: PathBuf,
}

/// One layer's training rows, per layer of one sample.
#[derive(Default)]
struct Collector {
    prompt: std::ops::Range<usize>,
    repeated: std::ops::Range<usize>,
    layers: Vec<(Tensor, Tensor)>,
}

impl AttentionHook for Collector {
    fn after_attention(&mut self, context: &mut LayerContext<'_>) -> kvpress::core::Result<()> {
        let rows = kvpress::presses::kvzap::targets::layer_targets(
            context,
            self.prompt.clone(),
            self.repeated.clone(),
        )?;
        self.layers.push(rows);
        Ok(())
    }
}

/// The token ids of the repeat chat of `sample`, and where its two copies are.
fn repeat_chat(
    model: &LoadedModel,
    sample: &str,
) -> Result<(Vec<u32>, std::ops::Range<usize>, std::ops::Range<usize>)> {
    let template = model.chat_template.as_ref().with_context(|| {
        format!(
            "{} has no chat template; KVzap's targets come from a chat in which the model \
             repeats the text",
            model.path.display()
        )
    })?;
    let messages = [
        ChatMessage::user(format!("{sample}{REPEAT}")),
        ChatMessage {
            role: "assistant".into(),
            content: sample.to_string(),
        },
    ];
    let text = template.render(&messages, false)?;
    let parts: Vec<&str> = text.splitn(3, sample).collect();
    let [prefix, between, rest] = parts[..] else {
        bail!("the chat template altered the sample; its copies cannot be found");
    };
    let encode = |t: &str| model.tokenizer.encode(t, false);
    let (prefix, copy, between, rest) = (
        encode(prefix)?,
        encode(sample)?,
        encode(between)?,
        encode(rest)?,
    );
    let first = prefix.len()..prefix.len() + copy.len();
    let second = first.end + between.len()..first.end + between.len() + copy.len();
    let ids = [prefix, copy.clone(), between, copy, rest].concat();
    Ok((ids, first, second))
}

/// R² (mean over outputs) and Spearman rank correlation (mean over outputs) of `predicted`
/// against `truth`, both `(rows, outputs)`.
fn agreement(predicted: &[Vec<f32>], truth: &[Vec<f32>]) -> (f64, f64) {
    let outputs = truth.first().map_or(0, Vec::len);
    let column = |m: &[Vec<f32>], j: usize| -> Vec<f64> { m.iter().map(|r| r[j] as f64).collect() };
    let ranks = |v: &[f64]| -> Vec<f64> {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        let mut r = vec![0.0; v.len()];
        for (rank, &i) in order.iter().enumerate() {
            r[i] = rank as f64;
        }
        r
    };
    let pearson = |a: &[f64], b: &[f64]| -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        cov / (va * vb).sqrt()
    };
    let (mut r2, mut rho) = (0.0, 0.0);
    for j in 0..outputs {
        let (p, t) = (column(predicted, j), column(truth, j));
        let mean = t.iter().sum::<f64>() / t.len() as f64;
        let residual: f64 = p.iter().zip(&t).map(|(p, t)| (t - p).powi(2)).sum();
        let total: f64 = t.iter().map(|t| (t - mean).powi(2)).sum();
        r2 += 1.0 - residual / total;
        rho += pearson(&ranks(&p), &ranks(&t));
    }
    (r2 / outputs as f64, rho / outputs as f64)
}

/// `(rows, L, K)` as rows of `L * K` values.
fn rows_of(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let (rows, l, k) = t.dims3()?;
    Ok(t.reshape((rows, l * k))?.to_vec2::<f32>()?)
}

/// Fits the surrogates and writes them to `--out`.
pub fn run(args: Args) -> Result<()> {
    if !(0.0..1.0).contains(&args.test_fraction) || args.test_fraction.is_nan() {
        bail!("--test-fraction {} must be in [0, 1)", args.test_fraction);
    }
    if !(args.lr > 0.0 && args.lr.is_finite()) {
        bail!("--lr {} must be a positive number", args.lr);
    }
    let model_path = args.model.path();
    let mut inputs: Vec<(&str, &std::path::Path)> =
        args.texts.iter().map(|t| ("--text", t.as_path())).collect();
    inputs.push(("--model", model_path.as_path()));
    crate::output::check_output_file("--out", &args.out, &inputs)?;
    let loaded = args.model.load()?;
    let config = loaded.model.config().clone();
    let mut samples = Vec::new();
    for path in &args.texts {
        let (text, _) = super::calibrate_queries::read_calibration_text(path)?;
        let ids = loaded.tokenizer.encode(text.trim(), false)?;
        for chunk in ids.chunks(args.sample_tokens) {
            if chunk.len() * 2 < args.sample_tokens {
                continue; // a short tail: kvpress keeps samples of similar lengths
            }
            samples.push(loaded.tokenizer.decode(chunk, false)?.trim().to_string());
        }
    }
    let n_test = ((samples.len() as f64) * args.test_fraction).ceil() as usize;
    if samples.len() < 2 || n_test == 0 || n_test >= samples.len() {
        bail!(
            "the texts give {} samples of about {} tokens; at least 2 are needed (some to train, \
             some held out by --test-fraction {}): give more text or smaller --sample-tokens",
            samples.len(),
            args.sample_tokens,
            args.test_fraction
        );
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    let (mut train, mut test) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    let start = Instant::now();
    for (i, sample) in samples.iter().enumerate() {
        let (ids, prompt, repeated) = repeat_chat(&loaded, sample)?;
        if ids.len() > config.max_position_embeddings {
            bail!(
                "sample {i} takes {} tokens repeated, beyond the model's {} positions; use a \
                 smaller --sample-tokens",
                ids.len(),
                config.max_position_embeddings
            );
        }
        let mut collector = Collector {
            prompt: prompt.clone(),
            repeated,
            layers: Vec::new(),
        };
        let input = Tensor::new(ids.as_slice(), loaded.model.device())?.unsqueeze(0)?;
        loaded
            .model
            .forward(&input, &mut loaded.model.new_cache(), Some(&mut collector))?;
        let mut picked: Vec<u32> = (0..prompt.len() as u32).collect();
        picked.shuffle(&mut rng);
        picked.truncate(args.tokens_per_sample);
        let index = Tensor::new(picked.as_slice(), &Device::Cpu)?;
        let (xs, ys): (Vec<Tensor>, Vec<Tensor>) = collector
            .layers
            .iter()
            .map(|(x, y)| Ok((x.index_select(&index, 0)?, y.index_select(&index, 0)?)))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let (x, y) = (Tensor::stack(&xs, 1)?, Tensor::stack(&ys, 1)?);
        let target = if i >= samples.len() - n_test {
            &mut test
        } else {
            &mut train
        };
        target.0.push(x);
        target.1.push(y);
        eprintln!(
            "sample {}/{}: {} tokens ({:.1} s so far)",
            i + 1,
            samples.len(),
            ids.len(),
            start.elapsed().as_secs_f64()
        );
    }
    let collected = start.elapsed().as_secs_f64();
    let (x_train, y_train) = (Tensor::cat(&train.0, 0)?, Tensor::cat(&train.1, 0)?);
    let (x_test, y_test) = (Tensor::cat(&test.0, 0)?, Tensor::cat(&test.1, 0)?);
    if y_train
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .any(|v| !v.is_finite())
    {
        bail!("a KVzip+ score was zero (its log is infinite); the texts may hold repeated padding");
    }

    let fit_start = Instant::now();
    let (linear_w, linear_b) = fit::ridge(&x_train, &y_train, 1.0)?;
    let training = MlpTraining {
        hidden_dim: args.hidden_dim,
        epochs: args.epochs,
        lr: args.lr,
        batch_size: args.batch_size,
        seed: args.seed,
    };
    let mlp = fit::mlp(&x_train, &y_train, training)?;
    let fit_seconds = fit_start.elapsed().as_secs_f64();
    let tensors = [
        ("linear.weight", linear_w),
        ("linear.bias", linear_b),
        ("mlp.weight1", mlp.weight1),
        ("mlp.bias1", mlp.bias1),
        ("mlp.weight2", mlp.weight2),
        ("mlp.bias2", mlp.bias2),
    ]
    .into_iter()
    .map(|(n, t)| Ok((n.to_string(), t.to_dtype(DType::F32)?.contiguous()?)))
    .collect::<Result<_>>()?;
    let header = SurrogateHeader {
        format_version: FORMAT_VERSION,
        model_name: loaded
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        model_sha256: model_sha256(&loaded.path)?,
        n_layers: config.n_layers,
        hidden_size: x_train.dim(2)?,
        n_kv_heads: config.n_kv_heads,
        mlp_hidden_dim: args.hidden_dim,
        fit: serde_json::Value::Null,
    };
    let mut surrogates = Surrogates::new(header, tensors)?;
    let truth = rows_of(&y_test)?;
    let mut figures = serde_json::Map::new();
    for kind in [SurrogateKind::Linear, SurrogateKind::Mlp] {
        let predicted = rows_of(&surrogates.predict_rows(kind, &x_test)?)?;
        let (r2, rho) = agreement(&predicted, &truth);
        let name = match kind {
            SurrogateKind::Linear => "linear",
            SurrogateKind::Mlp => "mlp",
        };
        println!("{name}: held-out R² {r2:.3}, Spearman {rho:.3} (mean over layers and KV heads)");
        figures.insert(
            name.to_string(),
            serde_json::json!({"r2": r2, "spearman": rho}),
        );
    }
    surrogates.set_fit(serde_json::json!({
        "samples": {"train": samples.len() - n_test, "test": n_test},
        "rows": {"train": x_train.dim(0)?, "test": x_test.dim(0)?},
        "sample_tokens": args.sample_tokens,
        "tokens_per_sample": args.tokens_per_sample,
        "ridge_alpha": 1.0,
        "mlp": {"hidden_dim": args.hidden_dim, "epochs": args.epochs, "lr": args.lr,
                "batch_size": args.batch_size, "seed": args.seed, "final_train_mse": mlp.final_loss},
        "held_out": figures,
    }));
    surrogates.write(&args.out)?;
    println!(
        "{}: linear and MLP surrogates for {} ({} layers × {} KV heads) | {} train / {} test \
         rows | targets {collected:.1} s, fit {fit_seconds:.1} s",
        args.out.display(),
        surrogates.header.model_name,
        config.n_layers,
        config.n_kv_heads,
        x_train.dim(0)?,
        x_test.dim(0)?
    );
    Ok(())
}
