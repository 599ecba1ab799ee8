//! CaM (`cam`): the decode-time conformance checks, and its merge-then-evict step on a synthetic
//! layer against kvpress's `CAMPress.compress` written as plain loops (with merge probabilities
//! of 0 or 1, so that the Bernoulli draws are decided).

use candle_core::{DType, Device, Tensor};
use kvpress_core::press::{AttentionHistory, Press, PressInput};
use presses_baselines::Knorm;
use presses_testing::{run_decoding_conformance, SyntheticLayer, SyntheticShape};
use presses_wrappers::Cam;

fn knorm(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(Knorm { compression_ratio })
}

fn cam(inner: Box<dyn Press>, merge_budget: usize) -> Cam {
    Cam {
        inner,
        compression_interval: 8,
        target_size: 16,
        hidden_states_buffer_size: 8,
        merge_budget,
        seed: 0,
    }
}

#[test]
fn cam_conforms_as_a_decode_time_press() {
    run_decoding_conformance(&|r| Box::new(cam(knorm(r), 4)), true);
}

#[test]
fn inner_presses_that_cannot_rank_tokens_for_the_dense_cache_are_refused() {
    let chunkkv = kvpress_core::press::press_from_json(
        r#"{"press": "chunkkv", "inner": {"press": "knorm"}}"#,
    )
    .unwrap();
    let error = cam(chunkkv, 4).validate().unwrap_err();
    assert!(error.to_string().contains("a wrapper decides"), "{error}");
    let error = cam(knorm(0.0), 0).validate().unwrap_err();
    assert!(error.to_string().contains("merge_budget"), "{error}");
}

/// The values kvpress's CaM stores for the kept tokens, with every merge probability 0 or 1.
fn plain_merge(
    scores: &[Vec<f32>],
    values: &[Vec<Vec<f32>>],
    attention: &[Vec<f32>],
    n_kept: usize,
    n_merge: usize,
    budget: usize,
) -> (Vec<u32>, Vec<Vec<Vec<f32>>>) {
    let heads = scores.len();
    let n = scores[0].len();
    let mean: Vec<f32> = (0..n)
        .map(|t| scores.iter().map(|r| r[t]).sum::<f32>() / heads as f32)
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = order[..n_kept].to_vec();
    kept.sort();
    let mut evicted: Vec<usize> = order[n_kept..].to_vec();
    evicted.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]).then(b.cmp(&a)));
    let merged: Vec<usize> = evicted.into_iter().take(n_merge).collect();
    let mut out = values.to_vec();
    for &m in &merged {
        let start = kept.iter().position(|&k| k > m).unwrap_or(kept.len());
        let window: Vec<usize> = kept[start..(start + budget).min(kept.len())].to_vec();
        for h in 0..heads {
            if window.is_empty() {
                continue;
            }
            let mean_window: f32 =
                window.iter().map(|&w| attention[h][w]).sum::<f32>() / window.len() as f32;
            let ratio = attention[h][m] / mean_window;
            let p = if ratio.is_nan() {
                0.0
            } else {
                ratio.clamp(0.0, 1.0)
            };
            assert!(p == 0.0 || p == 1.0, "the test keeps probabilities decided");
            if p == 1.0 {
                for &w in &window {
                    for (o, v) in out[h][w].iter_mut().zip(&values[h][m]) {
                        *o += v / window.len() as f32;
                    }
                }
            }
        }
    }
    let kept_values = (0..heads)
        .map(|h| kept.iter().map(|&k| out[h][k].clone()).collect())
        .collect();
    (kept.into_iter().map(|k| k as u32).collect(), kept_values)
}

#[test]
fn merge_then_evict_matches_kvpress_written_as_loops() {
    let layer = SyntheticLayer::random(SyntheticShape::small(40), 9).unwrap();
    let input = layer.input();
    let n = 40;
    // Attention that is high (1) on even tokens and 0 on odd ones: an even evicted token merges
    // into a window whose mean is at most 1 (p = 1 unless the window is all odd: 1/0 -> 1);
    // an odd one has p = 0.
    let attention: Vec<Vec<f32>> = (0..2)
        .map(|_| (0..n).map(|t| if t % 2 == 0 { 1.0 } else { 0.0 }).collect())
        .collect();
    let flat: Vec<f32> = attention.iter().flatten().copied().collect();
    let sums = Tensor::from_vec(flat, (1, 2, n), &Device::Cpu).unwrap();
    let with_history = PressInput {
        attention_history: Some(AttentionHistory {
            sums: &sums,
            new_forwards: 6,
        }),
        ..input
    };
    let press = cam(knorm(0.0), 3);
    let ratio = 1.0 - (16.0 + 0.5) / n as f64;
    let compression = press.compress_at_ratio(&with_history, ratio).unwrap();
    let scores: Vec<Vec<f32>> = compression
        .scores
        .as_ref()
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    let values: Vec<Vec<Vec<f32>>> = input.values.get(0).unwrap().to_vec3().unwrap();
    let (kept, want) = plain_merge(&scores, &values, &attention, 16, 6, 3);
    for head in compression.selection.heads() {
        assert_eq!(head, &kept);
    }
    let got: Vec<Vec<Vec<f32>>> = compression
        .selection
        .values()
        .expect("merged values")
        .to_dtype(DType::F32)
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec3()
        .unwrap();
    let mut changed = 0;
    for h in 0..2 {
        for (i, &k) in kept.iter().enumerate() {
            for (g, w) in got[h][i].iter().zip(&want[h][i]) {
                assert!((g - w).abs() < 1e-6, "head {h} token {k}: {g} vs {w}");
            }
            changed += usize::from(got[h][i] != values[h][k as usize]);
        }
    }
    assert!(changed > 0, "some kept values received merged values");
    // Without attention observed, nothing merges (kvpress's 0/0 probabilities are 0).
    let plain = press.compress_at_ratio(&input, ratio).unwrap();
    let kept_values = plain.selection.values().unwrap().get(0).unwrap();
    let original = plain
        .selection
        .gather(input.values)
        .unwrap()
        .get(0)
        .unwrap();
    let diff = (kept_values - original)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
}
