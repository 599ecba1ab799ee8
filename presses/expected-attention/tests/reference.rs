//! ExpectedAttention against a plain f64 transcription of kvpress's `ExpectedAttentionPress`:
//! pre-RoPE queries projected again from the hidden states, explicit averaged rotation matrices
//! built from the model's rotary tables, loops for every sum.

// Indexed loops are the point of a reference written like the formulas.
#![allow(clippy::needless_range_loop)]

use candle_core::{DType, Device, Tensor};
use kvpress_core::{PressInput, RotaryEmbedding, Scorer};
use presses_expected_attention::ExpectedAttention;
use presses_testing::{SyntheticLayer, SyntheticShape};

type Matrix = Vec<Vec<f64>>;

fn matmul(a: &Matrix, b: &Matrix) -> Matrix {
    let (n, k, m) = (a.len(), b.len(), b[0].len());
    (0..n)
        .map(|i| {
            (0..m)
                .map(|j| (0..k).map(|l| a[i][l] * b[l][j]).sum())
                .collect()
        })
        .collect()
}

fn transpose(a: &Matrix) -> Matrix {
    (0..a[0].len())
        .map(|j| a.iter().map(|row| row[j]).collect())
        .collect()
}

/// kvpress's `R = mean_p (cos_p * I + sin_p * P)` over positions `start..start + n`.
fn averaged_rope_matrix(rotary: &RotaryEmbedding, start: usize, n: usize) -> Matrix {
    let d = rotary.head_dim();
    let half = d / 2;
    let positions: Vec<usize> = (start..start + n).collect();
    let (cos, sin) = rotary.tables(&positions, DType::F32).unwrap();
    let (cos, sin) = (cos.to_vec2::<f32>().unwrap(), sin.to_vec2::<f32>().unwrap());
    let mut p = vec![vec![0.0; d]; d];
    for i in 0..half {
        p[half + i][i] = 1.0;
        p[i][half + i] = -1.0;
    }
    let mut r = vec![vec![0.0; d]; d];
    for (cos, sin) in cos.iter().zip(&sin) {
        for i in 0..d {
            for j in 0..d {
                let identity = if i == j { 1.0 } else { 0.0 };
                r[i][j] += f64::from(cos[j % half]) * identity + f64::from(sin[j % half]) * p[i][j];
            }
        }
    }
    r.iter()
        .map(|row| row.iter().map(|x| x / n as f64).collect())
        .collect()
}

/// A `(b, h, t, d)` tensor as nested vectors.
fn nested(tensor: &Tensor) -> Vec<Vec<Vec<Vec<f32>>>> {
    let (b, h, t, d) = tensor.dims4().unwrap();
    let flat = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (0..b)
        .map(|bi| {
            (0..h)
                .map(|hi| {
                    (0..t)
                        .map(|ti| {
                            let at = ((bi * h + hi) * t + ti) * d;
                            flat[at..at + d].to_vec()
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// Scores `(batch, n_kv_heads, n_tokens)` flattened.
fn reference_scores(press: &ExpectedAttention, input: &PressInput<'_>) -> Vec<f64> {
    let hidden = input.hidden_states.to_vec3::<f32>().unwrap();
    let w_q = input
        .projections
        .query_weight()
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let keys = nested(input.keys);
    let values = nested(input.values);
    let (batch, n_heads, n_kv_heads, d) = (
        hidden.len(),
        input.shape.n_heads,
        input.shape.n_kv_heads,
        input.shape.head_dim,
    );
    let group = n_heads / n_kv_heads;
    let n_tokens = hidden[0].len();
    let sink = press.n_sink;
    let n = n_tokens - sink;
    let r = averaged_rope_matrix(input.rotary, n_tokens, press.n_future_positions);

    let mut scores = vec![vec![vec![0.0f64; n]; n_kv_heads]; batch];
    for b in 0..batch {
        for h in 0..n_heads {
            // Pre-RoPE queries of tokens sink.. : W_q h_t.
            let queries: Matrix = (sink..n_tokens)
                .map(|t| {
                    (0..d)
                        .map(|j| {
                            let row = &w_q[h * d + j];
                            row.iter()
                                .zip(&hidden[b][t])
                                .map(|(w, x)| f64::from(*w) * f64::from(*x))
                                .sum()
                        })
                        .collect()
                })
                .collect();
            let mu: Vec<f64> = (0..d)
                .map(|j| queries.iter().map(|q| q[j]).sum::<f64>() / n as f64)
                .collect();
            let mut cov = vec![vec![0.0; d]; d];
            for q in &queries {
                for i in 0..d {
                    for j in 0..d {
                        cov[i][j] += (q[i] - mu[i]) * (q[j] - mu[j]) / n as f64;
                    }
                }
            }
            let mu_rot: Vec<f64> = matmul(&vec![mu], &transpose(&r)).remove(0);
            let cov_rot = matmul(&r, &matmul(&cov, &transpose(&r)));
            let g = h / group;
            let logits: Vec<f64> = (sink..n_tokens)
                .map(|t| {
                    let k: Vec<f64> = keys[b][g][t].iter().map(|&x| f64::from(x)).collect();
                    let mut z: f64 =
                        k.iter().zip(&mu_rot).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt();
                    if press.use_covariance {
                        let mut quadratic = 0.0;
                        for i in 0..d {
                            for j in 0..d {
                                quadratic += k[i] * cov_rot[i][j] * k[j];
                            }
                        }
                        z += quadratic / d as f64 / 2.0;
                    }
                    z
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = logits.iter().map(|z| (z - max).exp()).sum();
            for (t, z) in logits.iter().enumerate() {
                scores[b][g][t] += (z - max).exp() / total / group as f64;
            }
        }
        if press.use_vnorm {
            for (g, row) in scores[b].iter_mut().enumerate() {
                for (t, s) in row.iter_mut().enumerate() {
                    let norm = values[b][g][sink + t]
                        .iter()
                        .map(|&v| f64::from(v) * f64::from(v))
                        .sum::<f64>()
                        .sqrt();
                    *s = (*s + press.epsilon) * norm;
                }
            }
        }
    }
    let max = scores
        .iter()
        .flatten()
        .flatten()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max);
    scores
        .iter()
        .flatten()
        .flat_map(|row| std::iter::repeat_n(max + 1.0, sink).chain(row.iter().cloned()))
        .collect()
}

fn assert_close(press: &ExpectedAttention, input: &PressInput<'_>) {
    let expected = reference_scores(press, input);
    let actual = press
        .score(input, 0.5)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(actual.len(), expected.len());
    let largest = expected.iter().cloned().fold(0.0, f64::max);
    for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
        let error = (f64::from(*a) - e).abs();
        assert!(
            error <= 1e-4 * e.abs() + 1e-7 * largest,
            "{press:?}: score {i} is {a}, reference {e}"
        );
    }
}

#[test]
fn scores_match_the_reference_with_the_default_parameters() {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 1).unwrap();
    assert_close(&ExpectedAttention::default(), &layer.input());
}

#[test]
fn scores_match_the_reference_for_every_option() {
    let layer = SyntheticLayer::random(SyntheticShape::small(40), 2).unwrap();
    for (use_covariance, use_vnorm) in [(false, true), (true, false), (false, false)] {
        let press = ExpectedAttention {
            n_future_positions: 7,
            n_sink: 3,
            use_covariance,
            use_vnorm,
            epsilon: 0.02,
            ..ExpectedAttention::default()
        };
        assert_close(&press, &layer.input());
    }
    let no_sinks = ExpectedAttention {
        n_sink: 0,
        n_future_positions: 1,
        ..ExpectedAttention::default()
    };
    assert_close(&no_sinks, &layer.input());
}

#[test]
fn scores_match_the_reference_for_larger_groups_and_batches() {
    let shape = SyntheticShape {
        batch: 2,
        n_heads: 6,
        n_kv_heads: 2,
        head_dim: 16,
        hidden: 24,
        n_tokens: 37,
    };
    let layer = SyntheticLayer::random(shape, 5).unwrap();
    assert_close(
        &ExpectedAttention {
            n_future_positions: 100,
            ..ExpectedAttention::default()
        },
        &layer.input(),
    );
}

#[test]
fn future_positions_may_lie_past_the_model_maximum() {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 1).unwrap();
    let input = layer.input();
    let short = RotaryEmbedding::new(8, 10_000.0, 48, &Device::Cpu).unwrap();
    let short_input = PressInput {
        rotary: &short,
        ..input
    };
    let press = ExpectedAttention::default();
    let long = press.score(&input, 0.5).unwrap().flatten_all().unwrap();
    let short = press
        .score(&short_input, 0.5)
        .unwrap()
        .flatten_all()
        .unwrap();
    assert_eq!(
        long.to_vec1::<f32>().unwrap(),
        short.to_vec1::<f32>().unwrap()
    );
}
