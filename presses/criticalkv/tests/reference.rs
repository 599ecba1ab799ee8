//! CriticalKV against plain loops: the projected value norm `||W_o^(h) v||_1` (kvpress's
//! `vwl1norm`) and the two-stage merge of kvpress's `CriticalKVPress.score`.

// Indexed loops are the point of a reference written like the formulas.
#![allow(clippy::needless_range_loop)]

use kvpress_core::press::{top_k_indices, PressInput};
use kvpress_core::Scorer;
use presses_criticalkv::{first_stage_budget, projected_value_norms, CriticalKv};
use presses_snapkv::SnapKv;
use presses_testing::{SyntheticLayer, SyntheticShape};

/// `(batch * n_kv_heads, n_tokens)` reference norms in f64.
fn reference_norms(input: &PressInput<'_>) -> Vec<Vec<f64>> {
    let (batch, n_kv_heads, n_tokens, d) = input.values.dims4().unwrap();
    let values = input
        .values
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let w_o = input
        .projections
        .output_weight()
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let group = input.shape.n_heads / n_kv_heads;
    let mut norms = vec![vec![0.0; n_tokens]; batch * n_kv_heads];
    for b in 0..batch {
        for g in 0..n_kv_heads {
            for t in 0..n_tokens {
                let at = ((b * n_kv_heads + g) * n_tokens + t) * d;
                let v = &values[at..at + d];
                for h in g * group..(g + 1) * group {
                    let l1: f64 = w_o
                        .iter()
                        .map(|row| {
                            (0..d)
                                .map(|j| f64::from(row[h * d + j]) * f64::from(v[j]))
                                .sum::<f64>()
                                .abs()
                        })
                        .sum();
                    norms[b * n_kv_heads + g][t] += l1 / group as f64;
                }
            }
        }
    }
    norms
}

fn rows(tensor: &candle_core::Tensor) -> Vec<Vec<f32>> {
    let (b, h, t) = tensor.dims3().unwrap();
    tensor
        .reshape((b * h, t))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

fn assert_close(actual: f32, expected: f64, what: &str) {
    let error = (f64::from(actual) - expected).abs();
    assert!(
        error <= 1e-5 * expected.abs() + 1e-12,
        "{what}: {actual} vs reference {expected}"
    );
}

#[test]
fn projected_value_norms_match_a_plain_loop() {
    let shapes = [
        SyntheticShape::small(48),
        SyntheticShape {
            batch: 2,
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: 8,
            hidden: 20,
            n_tokens: 13,
        },
    ];
    for shape in shapes {
        let layer = SyntheticLayer::random(shape, 3).unwrap();
        let input = layer.input();
        let expected = reference_norms(&input);
        let actual = rows(&projected_value_norms(&input).unwrap());
        for (r, (row, expected)) in actual.iter().zip(&expected).enumerate() {
            for (t, (a, e)) in row.iter().zip(expected).enumerate() {
                assert_close(*a, *e, &format!("head {r}, token {t}"));
            }
        }
    }
}

#[test]
fn first_stage_tokens_score_the_maximum_and_the_rest_are_weighted() {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 3).unwrap();
    let input = layer.input();
    // Budgets below (12) and above (18) the 16 window tokens SnapKV protects.
    for ratio in [0.5, 0.25] {
        let inner = SnapKv {
            compression_ratio: ratio,
            window_size: 16,
            kernel_size: 5,
        };
        let press = CriticalKv {
            epsilon: 1e-2,
            ..CriticalKv::new(Box::new(inner.clone()))
        };
        let inner_scores = rows(&inner.score(&input, ratio).unwrap());
        let scores = rows(&press.score(&input, ratio).unwrap());
        let norms = reference_norms(&input);
        let budget = first_stage_budget(48, ratio, 0.5);
        assert_eq!(budget, if ratio == 0.5 { 12 } else { 18 });
        for (r, row) in scores.iter().enumerate() {
            let first_stage = top_k_indices(&inner_scores[r], budget);
            for (t, score) in row.iter().enumerate() {
                if first_stage.binary_search(&(t as u32)).is_ok() {
                    assert_eq!(
                        *score,
                        f32::MAX,
                        "head {r}, token {t} is in the first stage"
                    );
                } else {
                    let expected = (f64::from(inner_scores[r][t]) + 1e-2) * norms[r][t];
                    assert_close(*score, expected, &format!("head {r}, token {t}"));
                }
            }
        }
    }
}

#[test]
fn without_a_first_stage_scores_are_only_weighted() {
    let layer = SyntheticLayer::random(SyntheticShape::small(40), 4).unwrap();
    let input = layer.input();
    let inner = SnapKv {
        compression_ratio: 0.5,
        window_size: 8,
        kernel_size: 3,
    };
    let press = CriticalKv {
        first_stage_ratio: 0.0,
        ..CriticalKv::new(Box::new(inner.clone()))
    };
    let inner_scores = rows(&inner.score(&input, 0.5).unwrap());
    let scores = rows(&press.score(&input, 0.5).unwrap());
    let norms = reference_norms(&input);
    for (r, row) in scores.iter().enumerate() {
        for (t, score) in row.iter().enumerate() {
            let expected = (f64::from(inner_scores[r][t]) + 1e-4) * norms[r][t];
            assert_close(*score, expected, &format!("head {r}, token {t}"));
        }
    }
}
