//! The calibration hook on tiny random models (Llama, Qwen2 with query biases, Qwen3 with q-norm):
//! its mean and covariance are those of the pre-RoPE queries projected again from the hidden
//! states the way kvpress captures them (numpy's `mean` and `cov` with `ddof=1`, written as f64
//! loops), its Q-Filters those of the post-RoPE queries found by power iteration; and the
//! principal direction recovers a planted one.

// Indexed loops are the point of a reference written like the formulas.
#![allow(clippy::needless_range_loop)]

#[path = "../../../models/tests/common/mod.rs"]
mod tiny;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use kvpress_core::{AttentionHook, LayerContext};
use kvpress_models::LoadedModel;
use presses_query_stats::file::{QUERY_COV, QUERY_MEAN, Q_FILTERS};
use presses_query_stats::principal::{principal_direction, symmetric_eigen};
use presses_query_stats::{CalibrationSource, ModelIdentity, ModelShape, QueryCollector};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tiny::{Arch, Spec, F32};

/// What a reference hook records of each layer: pre-RoPE queries projected from the hidden
/// states (`(heads, n, d)` per layer, f64) and the post-RoPE queries.
#[derive(Default)]
struct Recorder {
    pre: Vec<Vec<Vec<Vec<f64>>>>,
    post: Vec<Vec<Vec<Vec<f64>>>>,
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

impl AttentionHook for Recorder {
    fn after_attention(&mut self, context: &mut LayerContext<'_>) -> kvpress_core::Result<()> {
        let (_, n_heads, n, d) = context.queries.dims4()?;
        let hidden = to_f64(context.hidden_states);
        let width = hidden.len() / n;
        let w = to_f64(&context.projections.query_weight()?);
        let bias = context.projections.query_bias()?.map(|b| to_f64(&b));
        let norm = context
            .projections
            .query_norm()
            .map(|(w, eps)| (to_f64(&w), eps));
        let post = to_f64(context.queries);
        let mut pre_heads = Vec::new();
        let mut post_heads = Vec::new();
        for h in 0..n_heads {
            let mut pre_rows = Vec::new();
            for t in 0..n {
                let mut q: Vec<f64> = (0..d)
                    .map(|j| {
                        let row = &w[(h * d + j) * width..(h * d + j + 1) * width];
                        let x = &hidden[t * width..(t + 1) * width];
                        let b = bias.as_ref().map_or(0.0, |b| b[h * d + j]);
                        row.iter().zip(x).map(|(a, b)| a * b).sum::<f64>() + b
                    })
                    .collect();
                if let Some((weight, eps)) = &norm {
                    let rms = (q.iter().map(|x| x * x).sum::<f64>() / d as f64 + eps).sqrt();
                    q.iter_mut()
                        .zip(weight)
                        .for_each(|(x, w)| *x = *x / rms * w);
                }
                pre_rows.push(q);
            }
            pre_heads.push(pre_rows);
            post_heads.push(
                (0..n)
                    .map(|t| post[(h * n + t) * d..(h * n + t + 1) * d].to_vec())
                    .collect(),
            );
        }
        if context.layer_idx == self.pre.len() {
            self.pre.push(pre_heads);
            self.post.push(post_heads);
        } else {
            for (all, new) in self.pre[context.layer_idx].iter_mut().zip(pre_heads) {
                all.extend(new);
            }
            for (all, new) in self.post[context.layer_idx].iter_mut().zip(post_heads) {
                all.extend(new);
            }
        }
        Ok(())
    }
}

fn model(arch: Arch) -> LoadedModel {
    Spec::new(arch)
        .build()
        .gguf(GgmlDType::F32)
        .load(F32)
        .unwrap()
}

fn shape_of(model: &LoadedModel) -> ModelShape {
    let c = model.model.config();
    ModelShape {
        n_layers: c.n_layers,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
    }
}

fn source() -> CalibrationSource {
    CalibrationSource {
        model: ModelIdentity {
            sha256: "ab".repeat(32),
            name: "tiny".to_string(),
        },
        max_tokens: 64,
        texts: Vec::new(),
    }
}

fn forward(model: &LoadedModel, ids: &[u32], hook: &mut dyn AttentionHook) {
    let ids = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut cache = model.model.new_cache();
    model.model.forward(&ids, &mut cache, Some(hook)).unwrap();
}

/// Random token sequences of these lengths.
fn sequences(lengths: &[usize]) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(7);
    lengths
        .iter()
        .map(|&n| (0..n).map(|_| rng.random_range(3..40)).collect())
        .collect()
}

/// numpy's `mean(axis=0)` and `cov(rowvar=False)` (ddof 1) of `rows`.
fn mean_and_cov(rows: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let (n, d) = (rows.len() as f64, rows[0].len());
    let mean: Vec<f64> = (0..d)
        .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n)
        .collect();
    let mut cov = vec![0f64; d * d];
    for r in rows {
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] += (r[i] - mean[i]) * (r[j] - mean[j]) / (n - 1.0);
            }
        }
    }
    (mean, cov)
}

/// The top eigenvector of `XᵀX` by power iteration, oriented towards the rows' mean.
fn power_direction(rows: &[Vec<f64>]) -> Vec<f64> {
    let d = rows[0].len();
    let mut m = vec![0f64; d * d];
    for r in rows {
        for i in 0..d {
            for j in 0..d {
                m[i * d + j] += r[i] * r[j];
            }
        }
    }
    let mut v: Vec<f64> = (0..d).map(|i| 1.0 + i as f64 / d as f64).collect();
    for _ in 0..20_000 {
        let next: Vec<f64> = (0..d)
            .map(|i| (0..d).map(|j| m[i * d + j] * v[j]).sum())
            .collect();
        let norm = next.iter().map(|x| x * x).sum::<f64>().sqrt();
        v = next.iter().map(|x| x / norm).collect();
    }
    let projection: f64 = rows
        .iter()
        .flat_map(|r| r.iter().zip(&v).map(|(a, b)| a * b))
        .sum();
    if projection < 0.0 {
        v.iter_mut().for_each(|x| *x = -*x);
    }
    v
}

fn assert_close(got: &[f32], want: &[f64], tolerance: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= tolerance * (w.abs() + scale * 1e-3),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn statistics_are_those_of_the_pre_rope_queries_kvpress_captures() {
    let n_sink = 3;
    // The 2-token sequence is no longer than the sinks: it adds nothing.
    let sequences = sequences(&[40, 2, 25, 64]);
    for arch in Arch::ALL {
        let model = model(arch);
        let shape = shape_of(&model);
        let mut collector = QueryCollector::new(shape, n_sink);
        let mut recorder = Recorder::default();
        for ids in &sequences {
            forward(&model, ids, &mut collector);
            if ids.len() > n_sink {
                forward(&model, &ids[..], &mut recorder);
            }
        }
        assert_eq!(collector.n_queries(), (37 + 22 + 61) as u64, "{arch:?}");
        assert_eq!(collector.n_sequences(), 4);
        let calibration = collector
            .finish(std::path::Path::new("tiny.safetensors"), source())
            .unwrap();
        let file = &calibration.file;
        let header = file.header.as_ref().unwrap();
        assert_eq!(header.n_queries, 120);
        assert_eq!(header.n_sink, n_sink);
        assert_eq!(header.shape, shape);
        let d = shape.head_dim;
        let (mut means, mut covs, mut filters) = (Vec::new(), Vec::new(), Vec::new());
        for layer in 0..shape.n_layers {
            let mut directions = Vec::new();
            for head in 0..shape.n_heads {
                // Each sequence's queries after its sinks, sequences concatenated.
                let mut pre = Vec::new();
                let mut post = Vec::new();
                let mut start = 0;
                for ids in sequences.iter().filter(|s| s.len() > n_sink) {
                    pre.extend_from_slice(
                        &recorder.pre[layer][head][start + n_sink..start + ids.len()],
                    );
                    post.extend_from_slice(
                        &recorder.post[layer][head][start + n_sink..start + ids.len()],
                    );
                    start += ids.len();
                }
                let (mean, cov) = mean_and_cov(&pre);
                means.extend(mean);
                covs.extend(cov);
                directions.push(power_direction(&post));
            }
            let group = shape.n_heads / shape.n_kv_heads;
            for kv in 0..shape.n_kv_heads {
                for i in 0..d {
                    let sum: f64 = (0..group).map(|g| -directions[kv * group + g][i]).sum();
                    filters.push(sum / group as f64);
                }
            }
        }
        let what = |name: &str| format!("{arch:?} {name}");
        assert_close(
            &file.tensor(QUERY_MEAN).unwrap().data,
            &means,
            1e-4,
            &what("mean"),
        );
        assert_close(
            &file.tensor(QUERY_COV).unwrap().data,
            &covs,
            1e-4,
            &what("cov"),
        );
        assert_close(
            &file.tensor(Q_FILTERS).unwrap().data,
            &filters,
            1e-3,
            &what("filters"),
        );
        assert!(calibration
            .principal_share
            .iter()
            .all(|s| *s > 0.0 && *s <= 1.0 + 1e-9));
    }
}

#[test]
fn too_few_queries_and_filled_caches_are_refused() {
    let model = model(Arch::Llama);
    let shape = shape_of(&model);
    let mut collector = QueryCollector::new(shape, 4);
    forward(&model, &[5, 6, 7, 8, 9], &mut collector);
    let error = collector
        .finish(std::path::Path::new("x"), source())
        .unwrap_err()
        .to_string();
    assert!(error.contains("1 queries per head"), "{error}");
    assert!(error.contains("at least 2"), "{error}");

    // A forward over a filled cache (its first tokens are not the sequence's sinks).
    let mut collector = QueryCollector::new(shape, 4);
    let mut cache = model.model.new_cache();
    let ids = |v: &[u32]| Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    model
        .model
        .forward(&ids(&[5, 6, 7]), &mut cache, None)
        .unwrap();
    let error = model
        .model
        .forward(
            &ids(&[8, 9, 10, 11, 12, 13]),
            &mut cache,
            Some(&mut collector),
        )
        .unwrap_err()
        .to_string();
    assert!(error.contains("from an empty cache"), "{error}");

    // A collector set up for another layout.
    let mut collector = QueryCollector::new(
        ModelShape {
            n_layers: 3,
            ..shape
        },
        4,
    );
    let mut cache = model.model.new_cache();
    let error = model
        .model
        .forward(&ids(&[5, 6, 7, 8, 9, 10]), &mut cache, Some(&mut collector))
        .unwrap_err()
        .to_string();
    assert!(error.contains("set up for 3 layers"), "{error}");
}

#[test]
fn jacobi_gives_every_eigenpair_of_a_symmetric_matrix() {
    let mut rng = StdRng::seed_from_u64(1);
    for d in [1, 2, 7, 64] {
        let a: Vec<f64> = (0..d * d).map(|_| rng.random::<f64>() - 0.5).collect();
        let sym: Vec<f64> = (0..d * d)
            .map(|k| (a[k] + a[(k % d) * d + k / d]) / 2.0)
            .collect();
        let (values, vectors) = symmetric_eigen(&sym, d);
        for k in 0..d {
            let v: Vec<f64> = (0..d).map(|i| vectors[i * d + k]).collect();
            let norm: f64 = v.iter().map(|x| x * x).sum::<f64>();
            assert!((norm - 1.0).abs() < 1e-10, "d {d}: unit eigenvector");
            for i in 0..d {
                let av: f64 = (0..d).map(|j| sym[i * d + j] * v[j]).sum();
                assert!((av - values[k] * v[i]).abs() < 1e-10, "d {d}: A v = λ v");
            }
        }
    }
}

#[test]
fn the_principal_direction_recovers_a_planted_one_with_its_sign() {
    let d = 16;
    let mut rng = StdRng::seed_from_u64(3);
    let raw: Vec<f64> = (0..d).map(|_| rng.random::<f64>() - 0.5).collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    let u: Vec<f64> = raw.iter().map(|x| x / norm).collect();
    for sign in [1.0, -1.0] {
        // Queries a_t u + noise, with a_t mostly of this sign.
        let mut second_moment = vec![0f64; d * d];
        let mut sum = vec![0f64; d];
        for t in 0..2000 {
            let a = sign * (3.0 + rng.random::<f64>()) * if t % 10 == 0 { -1.0 } else { 1.0 };
            let q: Vec<f64> = u
                .iter()
                .map(|ui| a * ui + 0.3 * (rng.random::<f64>() - 0.5))
                .collect();
            for i in 0..d {
                sum[i] += q[i];
                for j in 0..d {
                    second_moment[i * d + j] += q[i] * q[j];
                }
            }
        }
        let principal = principal_direction(&second_moment, &sum);
        let alignment: f64 = principal.direction.iter().zip(&u).map(|(a, b)| a * b).sum();
        assert!(
            (alignment - sign).abs() < 1e-3,
            "sign {sign}: alignment {alignment}"
        );
        assert!(principal.share > 0.95, "share {}", principal.share);
    }
}
