//! KVzap's pieces on the default model: the training targets are KVzip+ scores computed from the
//! model's own attention weights, the ridge fit recovers a linear map, the MLP fit learns, and
//! the press scores with a surrogate file (and refuses one made for another shape).

use kvpress::candle::{DType, Device, Tensor};
use kvpress::core::press::{press_from_toml, Press};
use kvpress::core::{AttentionHook, ForwardPhase, LayerContext};
use kvpress::hooks::{ContextSession, PromptSplit};
use kvpress::models::{load_model, LoadedModel, WeightMode};
use kvpress::presses::kvzap::fit::{self, MlpTraining};
use kvpress::presses::kvzap::surrogate::FORMAT_VERSION;
use kvpress::presses::kvzap::targets::layer_targets;
use kvpress::presses::kvzap::{SurrogateHeader, Surrogates};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn model() -> LoadedModel {
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    load_model(&path, Some(WeightMode::Dense(DType::F32)), &Device::Cpu).unwrap()
}

/// Per layer: `layer_targets`, and the same from the attention weights the model computes.
struct Both {
    prompt: std::ops::Range<usize>,
    repeated: std::ops::Range<usize>,
    errors: Vec<f32>,
}

impl AttentionHook for Both {
    fn wants_attention_weights(&self, _layer: usize, _phase: ForwardPhase) -> bool {
        true
    }

    fn after_attention(&mut self, context: &mut LayerContext<'_>) -> kvpress::core::Result<()> {
        let (_, y) = layer_targets(context, self.prompt.clone(), self.repeated.clone())?;
        let weights = context.attention_weights.unwrap().get(0)?; // (H, n, n)
        let hidden = context.hidden_states.get(0)?;
        let values = context.values.get(0)?; // (kv, n, d)
        let w_o = context.projections.output_weight()?;
        let d = context.shape.head_dim;
        let group = context.shape.group_size();
        let y = y.to_vec2::<f32>()?; // (prompt, kv)
        let mut worst = 0f32;
        for (i, j) in self.prompt.clone().enumerate() {
            for (kv, &want) in y[i].iter().enumerate() {
                let mut best = f32::NEG_INFINITY;
                for h in kv * group..(kv + 1) * group {
                    let written = values
                        .get(kv)?
                        .get(j)?
                        .unsqueeze(0)?
                        .matmul(&w_o.narrow(1, h * d, d)?.t()?)?
                        .sqr()?
                        .sum_all()?
                        .sqrt()?
                        .to_scalar::<f32>()?;
                    for r in self.repeated.clone() {
                        let w = weights.get(h)?.get(r)?.get(j)?.to_scalar::<f32>()?;
                        let norm = hidden
                            .get(r)?
                            .sqr()?
                            .sum_all()?
                            .sqrt()?
                            .to_scalar::<f32>()?;
                        best = best.max(w / norm * written);
                    }
                }
                worst = worst.max((best.ln() - want).abs());
            }
        }
        self.errors.push(worst);
        Ok(())
    }
}

#[test]
fn targets_are_kvzip_plus_scores_from_the_models_attention() {
    let model = model();
    let prompt_ids = model
        .tokenizer
        .encode("The grass is green. The sky is blue.", false)
        .unwrap();
    let between = model
        .tokenizer
        .encode("\n\nRepeat the previous context exactly.\n", false)
        .unwrap();
    let n = prompt_ids.len();
    let ids = [prompt_ids.clone(), between.clone(), prompt_ids].concat();
    let mut both = Both {
        prompt: 0..n,
        repeated: n + between.len()..2 * n + between.len(),
        errors: Vec::new(),
    };
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .model
        .forward(&input, &mut model.model.new_cache(), Some(&mut both))
        .unwrap();
    assert_eq!(both.errors.len(), 30);
    let worst = both.errors.iter().copied().fold(0f32, f32::max);
    assert!(worst < 1e-4, "log scores differ by {worst}");
}

/// The largest absolute difference between `a` and `b`.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .unwrap()
}

#[test]
fn ridge_recovers_a_linear_map_and_the_mlp_learns() {
    let (rows, layers, d, k) = (2000, 2, 6, 3);
    // Seeded uniform values in [-1.7, 1.7) (unit variance).
    let mut rng = StdRng::seed_from_u64(7);
    let mut draw = |shape: (usize, usize, usize)| {
        let n = shape.0 * shape.1 * shape.2;
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.7f32..1.7)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    };
    let x = draw((rows, layers, d));
    let w = draw((layers, k, d));
    let b = Tensor::new(&[[0.5f32, -1.0, 2.0], [1.0, 0.0, -0.5]], &Device::Cpu).unwrap();
    // y[r, l] = W[l] x[r, l] + b[l]
    let y = x
        .transpose(0, 1)
        .unwrap()
        .matmul(&w.transpose(1, 2).unwrap())
        .unwrap()
        .broadcast_add(&b.unsqueeze(1).unwrap())
        .unwrap()
        .transpose(0, 1)
        .unwrap()
        .contiguous()
        .unwrap();
    let (fw, fb) = fit::ridge(&x, &y, 1.0).unwrap();
    let error = max_abs_diff(&fw, &w);
    assert!(error < 5e-3, "weights within {error}");
    let error = max_abs_diff(&fb, &b);
    assert!(error < 5e-3, "biases within {error}");
    let target = y.tanh().unwrap();
    let variance = target
        .var_keepdim(0)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let trained = fit::mlp(
        &x,
        &target,
        MlpTraining {
            hidden_dim: 32,
            epochs: 20,
            lr: 5e-3,
            batch_size: 128,
            seed: 0,
        },
    )
    .unwrap();
    assert!(
        trained.final_loss < 0.2 * variance,
        "mse {}",
        trained.final_loss
    );
}

#[test]
fn the_press_scores_with_a_surrogate_file_and_refuses_another_shape() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let write = |hidden: usize, name: &str| {
        let (l, k, m) = (30, 3, 4);
        let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
        // Linear surrogate: score = position-free constant per head (bias), so every token of
        // head h scores h.
        let tensors = [
            ("linear.weight", zeros(&[l, k, hidden])),
            (
                "linear.bias",
                Tensor::new(&[0f32, 1.0, 2.0], &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap()
                    .broadcast_as((l, k))
                    .unwrap()
                    .contiguous()
                    .unwrap(),
            ),
            ("mlp.weight1", zeros(&[l, m, hidden])),
            ("mlp.bias1", zeros(&[l, m])),
            ("mlp.weight2", zeros(&[l, k, m])),
            ("mlp.bias2", zeros(&[l, k])),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
        let header = SurrogateHeader {
            format_version: FORMAT_VERSION,
            model_name: "test".into(),
            model_sha256: String::new(),
            n_layers: l,
            hidden_size: hidden,
            n_kv_heads: k,
            mlp_hidden_dim: m,
            fit: serde_json::Value::Null,
        };
        let path = dir.path().join(name);
        Surrogates::new(header, tensors)
            .unwrap()
            .write(&path)
            .unwrap();
        path
    };
    let good = write(576, "good.safetensors");
    let context = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/needle-haystack.txt"
    ))
    .unwrap();
    let ids = PromptSplit::context_ids(&model, &context).unwrap();
    // Threshold 1.5: head 2 (score 2) keeps everything, heads 0 and 1 only their window.
    let press: Box<dyn Press> = press_from_toml(&format!(
        "press = \"dms\"\nthreshold = 1.5\nsliding_window_size = 16\n[inner]\npress = \"kvzap\"\nmodel_type = \"linear\"\nkvzap_file = {:?}\n",
        good.to_str().unwrap()
    ))
    .unwrap();
    let (_, report) = ContextSession::compress(&model.model, &ids, press.as_ref(), &[]).unwrap();
    for layer in &report.layers {
        let counts: Vec<usize> = layer.selection.heads().iter().map(Vec::len).collect();
        assert_eq!(counts, vec![16, 16, ids.len()], "layer {}", layer.layer_idx);
    }
    let other = write(64, "other.safetensors");
    let press = press_from_toml(&format!(
        "press = \"kvzap\"\ncompression_ratio = 0.5\nkvzap_file = {:?}\n",
        other.to_str().unwrap()
    ))
    .unwrap();
    let error = ContextSession::compress(&model.model, &ids, press.as_ref(), &[])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("hidden size 64") && error.contains("train-kvzap"),
        "{error}"
    );
    let error = press_from_toml("press = \"kvzap\"\ncompression_ratio = 0.5\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("kvzap_file"), "{error}");
}
