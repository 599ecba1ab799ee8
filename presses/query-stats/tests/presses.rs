//! `qfilter` and `expected_attention_stats` on synthetic layers: the conformance suite, their
//! kept sets on a fixed input, what their scores are (kvpress's sign for Q-Filters; exactly
//! ExpectedAttention's scores given the same statistics), and the errors a bad file gives.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use kvpress_core::press::Scorer;
use kvpress_core::{Press, PressInput};
use presses_expected_attention::ExpectedAttention;
use presses_query_stats::file::{CalibratedTensors, QUERY_COV, QUERY_MEAN, Q_FILTERS};
use presses_query_stats::{ExpectedAttentionStats, ModelShape, QFilter};
use presses_testing::{run_conformance, Promises, SyntheticLayer, SyntheticShape};

fn qfilter(path: &Path, compression_ratio: f64) -> QFilter {
    QFilter {
        compression_ratio,
        filters_file: path.to_path_buf(),
    }
}

fn stats_press(path: &Path, compression_ratio: f64) -> ExpectedAttentionStats {
    ExpectedAttentionStats {
        compression_ratio,
        stats_file: path.to_path_buf(),
        ..ExpectedAttentionStats::default()
    }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn qfilter_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_small(dir.path(), "stats.safetensors", 1);
    run_conformance(
        &|ratio| Box::new(qfilter(&path, ratio)),
        &Promises::default(),
    );
}

#[test]
fn expected_attention_stats_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_small(dir.path(), "stats.safetensors", 2);
    run_conformance(
        &|ratio| Box::new(stats_press(&path, ratio)),
        &Promises {
            always_kept: |_| vec![0, 1, 2, 3],
            min_tokens: 5,
            ..Promises::default()
        },
    );
}

#[test]
fn kept_sets_on_a_fixed_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_small(dir.path(), "stats.safetensors", 3);
    let layer = || SyntheticLayer::random(SyntheticShape::small(48), 1).unwrap();
    let qfilter_kept = presses_testing::kept_sets(&qfilter(&path, 0.5), layer()).unwrap();
    let stats_kept = presses_testing::kept_sets(&stats_press(&path, 0.5), layer()).unwrap();
    insta::assert_json_snapshot!((qfilter_kept, stats_kept));
}

/// Keys `(1, 2, n, 8)`: token `t` is `+2u` (even `t`) or `-2u` (odd `t`) plus noise of 0.1.
fn planted_keys(u: &[f32], n: usize) -> Tensor {
    let mut keys = Vec::new();
    for head in 0..2 {
        for t in 0..n {
            let sign = if t % 2 == 0 { 2.0 } else { -2.0 };
            for (i, ui) in u.iter().enumerate() {
                let noise = 0.1 * (((t * 7 + i * 3 + head) % 11) as f32 / 5.0 - 1.0);
                keys.push(sign * ui + noise);
            }
        }
    }
    Tensor::from_vec(keys, (1, 2, n, 8), &Device::Cpu).unwrap()
}

/// A file whose filter is `filter` for every layer and KV head.
fn filters_file(dir: &Path, name: &str, filter: &[f32]) -> PathBuf {
    let shape = common::SMALL;
    let tensors = CalibratedTensors {
        q_filters: filter.repeat(shape.n_layers * shape.n_kv_heads),
        ..common::random_tensors(shape, 4)
    };
    common::write(dir, name, shape, tensors)
}

#[test]
fn a_filter_keeps_the_keys_on_the_side_its_sign_says() {
    // The stored filter is `-u` (the Q-Filters authors' convention, which `calibrate-queries`
    // follows): kvpress's `-(filter · k)` is `⟨u, k⟩`, so the keys along `+u` are kept.
    let norm = (1..=8).map(|i| (i * i) as f32).sum::<f32>().sqrt();
    let u: Vec<f32> = (1..=8).map(|i| i as f32 / norm).collect();
    let minus_u: Vec<f32> = u.iter().map(|x| -x).collect();
    let dir = tempfile::tempdir().unwrap();
    let layer = SyntheticLayer::random(SyntheticShape::small(40), 5).unwrap();
    let keys = planted_keys(&u, 40);
    let input = layer.input();
    let input = input.with_keys_values(&keys, input.values);
    let even: Vec<u32> = (0..40).step_by(2).collect();
    let odd: Vec<u32> = (1..40).step_by(2).collect();
    for (name, filter, kept) in [("minus_u", &minus_u, &even), ("plus_u", &u, &odd)] {
        let path = filters_file(dir.path(), name, filter);
        let press = qfilter(&path, 0.5);
        let selection = press.compress(&input).unwrap().selection;
        for head in 0..2 {
            assert_eq!(
                selection.head(0, head),
                kept.as_slice(),
                "{name}, head {head}"
            );
        }
        // The scores are -(filter · k), exactly.
        let scores = flat(&press.score(&input, 0.5).unwrap());
        let k = flat(&keys);
        for (i, score) in scores.iter().enumerate() {
            let expected: f32 = -(0..8).map(|j| filter[j] * k[i * 8 + j]).sum::<f32>();
            assert!(
                (score - expected).abs() <= 1e-5,
                "{name}: {score} vs {expected}"
            );
        }
    }
}

#[test]
fn each_kv_head_and_layer_uses_its_own_filter() {
    let shape = common::SMALL;
    let dir = tempfile::tempdir().unwrap();
    let tensors = common::random_tensors(shape, 6);
    let filters = tensors.q_filters.clone();
    let path = common::write(dir.path(), "stats.safetensors", shape, tensors);
    for layer_idx in [0, 3] {
        let layer = SyntheticLayer::random(SyntheticShape::small(20), 7)
            .unwrap()
            .at_layer(layer_idx, 4);
        let input = layer.input();
        let scores = flat(&qfilter(&path, 0.5).score(&input, 0.5).unwrap());
        let keys = flat(input.keys);
        for head in 0..2 {
            let filter = &filters[(layer_idx * 2 + head) * 8..(layer_idx * 2 + head + 1) * 8];
            for t in 0..20 {
                let k = &keys[(head * 20 + t) * 8..(head * 20 + t + 1) * 8];
                let expected: f32 = -filter.iter().zip(k).map(|(f, k)| f * k).sum::<f32>();
                let got = scores[head * 20 + t];
                assert!(
                    (got - expected).abs() <= 1e-5,
                    "layer {layer_idx} head {head}"
                );
            }
        }
    }
}

/// A file whose layer-0 statistics are ExpectedAttention's own for `input` (biased
/// covariance, as ExpectedAttention computes them), the other layers random.
fn own_statistics_file(dir: &Path, input: &PressInput<'_>) -> PathBuf {
    let (mean, cov) = ExpectedAttention::default()
        .query_statistics(input)
        .unwrap();
    let (mean, cov) = (flat(&mean), flat(&cov.unwrap()));
    let mut tensors = common::random_tensors(common::SMALL, 8);
    tensors.query_mean[..mean.len()].copy_from_slice(&mean);
    tensors.query_cov[..cov.len()].copy_from_slice(&cov);
    common::write(dir, "own.safetensors", common::SMALL, tensors)
}

#[test]
fn with_the_contexts_own_statistics_the_scores_are_expected_attentions() {
    let dir = tempfile::tempdir().unwrap();
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 9).unwrap();
    let input = layer.input();
    let path = own_statistics_file(dir.path(), &input);
    for (use_covariance, use_vnorm, n_future_positions) in
        [(true, true, 512), (false, true, 7), (true, false, 100)]
    {
        let stats = ExpectedAttentionStats {
            use_covariance,
            use_vnorm,
            n_future_positions,
            epsilon: 0.01,
            ..stats_press(&path, 0.5)
        };
        let reference = stats.expected_attention();
        assert_eq!(
            flat(&stats.score(&input, 0.5).unwrap()),
            flat(&reference.score(&input, 0.5).unwrap()),
            "{stats:?}"
        );
    }
}

#[test]
fn the_file_statistics_are_used_for_every_context_and_batch_element() {
    // Two different contexts score with the same statistics: a context's own queries do not
    // matter, only its keys and values.
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_small(dir.path(), "stats.safetensors", 10);
    let press = stats_press(&path, 0.5);
    let a = SyntheticLayer::random(SyntheticShape::small(30), 11).unwrap();
    let b = SyntheticLayer::random(SyntheticShape::small(30), 12).unwrap();
    let (input_a, input_b) = (a.input(), b.input());
    let mixed = input_b.with_keys_values(input_a.keys, input_a.values);
    assert_eq!(
        flat(&press.score(&input_a, 0.5).unwrap()),
        flat(&press.score(&mixed, 0.5).unwrap())
    );
    let batch = SyntheticLayer::random(
        SyntheticShape {
            batch: 2,
            ..SyntheticShape::small(30)
        },
        13,
    )
    .unwrap();
    let input = batch.input();
    let scores = flat(&press.score(&input, 0.5).unwrap());
    // Every batch element scores as alone, but for the sinks: kvpress pads them with the
    // largest score of the whole batch plus one.
    let largest = (0..scores.len())
        .filter(|i| i % 30 >= 4)
        .map(|i| scores[i])
        .fold(f32::NEG_INFINITY, f32::max);
    for b in 0..2 {
        let keys = input.keys.narrow(0, b, 1).unwrap();
        let values = input.values.narrow(0, b, 1).unwrap();
        let one = input.with_keys_values(&keys, &values);
        let alone = flat(&press.score(&one, 0.5).unwrap());
        for (i, (batched, alone)) in scores[b * 60..(b + 1) * 60].iter().zip(&alone).enumerate() {
            if i % 30 < 4 {
                assert_eq!(*batched, largest + 1.0, "batch element {b}, sink {i}");
            } else {
                assert_eq!(batched, alone, "batch element {b}, token {i}");
            }
        }
    }
}

fn error_of(press: &dyn Scorer, input: &PressInput<'_>) -> String {
    press.score(input, 0.5).unwrap_err().to_string()
}

#[test]
fn a_missing_path_or_file_is_an_error_naming_it() {
    let error = QFilter::default().validate().unwrap_err().to_string();
    assert!(error.contains("filters_file is required"), "{error}");
    let error = ExpectedAttentionStats::default()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(error.contains("stats_file is required"), "{error}");
    let layer = SyntheticLayer::random(SyntheticShape::small(20), 1).unwrap();
    let missing = Path::new("/no/such/folder/stats.safetensors");
    for error in [
        error_of(&qfilter(missing, 0.5), &layer.input()),
        error_of(&stats_press(missing, 0.5), &layer.input()),
    ] {
        assert!(
            error.contains("/no/such/folder/stats.safetensors"),
            "{error}"
        );
        assert!(error.contains("kvpress calibrate-queries"), "{error}");
    }
}

#[test]
fn a_file_for_another_model_layout_is_refused_naming_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_small(dir.path(), "stats.safetensors", 14);
    // The same file, used in a model of 30 layers.
    let layer = SyntheticLayer::random(SyntheticShape::small(20), 1)
        .unwrap()
        .at_layer(0, 30);
    let error = error_of(&qfilter(&path, 0.5), &layer.input());
    assert!(error.contains("computed for another model"), "{error}");
    assert!(error.contains("4 layers"), "{error}");
    assert!(error.contains("30 layers"), "{error}");
    // Another head dimension.
    let wider = SyntheticLayer::random(
        SyntheticShape {
            head_dim: 16,
            ..SyntheticShape::small(20)
        },
        1,
    )
    .unwrap();
    let error = error_of(&stats_press(&path, 0.5), &wider.input());
    assert!(error.contains("head dim 8"), "{error}");
    assert!(error.contains("head dim 16"), "{error}");
}

#[test]
fn another_rope_base_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = CalibratedTensors {
        rope_inv_freq: kvpress_core::RotaryEmbedding::new(8, 500_000.0, 16, &Device::Cpu)
            .unwrap()
            .inv_freq()
            .to_vec(),
        ..common::random_tensors(common::SMALL, 15)
    };
    let path = common::write(dir.path(), "rope.safetensors", common::SMALL, tensors);
    let layer = SyntheticLayer::random(SyntheticShape::small(20), 1).unwrap();
    let error = error_of(&qfilter(&path, 0.5), &layer.input());
    assert!(error.contains("RoPE frequencies"), "{error}");
}

/// A safetensors file without a header (as kvpress's Hugging Face files are) holding `tensors`
/// in bf16.
fn foreign_file(dir: &Path, name: &str, tensors: &[(&str, Vec<usize>, &[f32])]) -> PathBuf {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let bf16: Vec<u8> = data
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect();
            (name.to_string(), shape.clone(), bf16)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(name, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, shape.clone(), data)
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    path
}

#[test]
fn kvpress_files_without_a_header_are_read_and_checked_by_shape() {
    let dir = tempfile::tempdir().unwrap();
    let ModelShape {
        n_layers: l,
        n_heads: h,
        n_kv_heads: kv,
        head_dim: d,
    } = common::SMALL;
    let tensors = common::random_tensors(common::SMALL, 16);
    let layer = SyntheticLayer::random(SyntheticShape::small(24), 1).unwrap();
    let input = layer.input();

    // kvpress's QFilters file: q_filters only, bf16.
    let filters = foreign_file(
        dir.path(),
        "qfilt.safetensors",
        &[(Q_FILTERS, vec![l, kv, d], &tensors.q_filters)],
    );
    let scores = flat(&qfilter(&filters, 0.5).score(&input, 0.5).unwrap());
    let keys = flat(input.keys);
    let rounded: Vec<f32> = tensors.q_filters[..kv * d]
        .iter()
        .map(|x| half::bf16::from_f32(*x).to_f32())
        .collect();
    for (i, score) in scores.iter().enumerate() {
        let f = &rounded[(i / 24) * d..(i / 24 + 1) * d];
        let expected: f32 = -f
            .iter()
            .zip(&keys[i * d..(i + 1) * d])
            .map(|(a, b)| a * b)
            .sum::<f32>();
        assert!((score - expected).abs() <= 1e-5);
    }
    // The same file for expected_attention_stats: no statistics in it.
    let error = error_of(&stats_press(&filters, 0.5), &input);
    assert!(error.contains("holds no `query_mean`"), "{error}");
    assert!(error.contains("expected_attention_stats"), "{error}");

    // kvpress's ExpectedAttentionStats file: mean and covariance.
    let stats = foreign_file(
        dir.path(),
        "stats.safetensors",
        &[
            (QUERY_MEAN, vec![l, h, d], &tensors.query_mean),
            (QUERY_COV, vec![l, h, d, d], &tensors.query_cov),
        ],
    );
    assert!(stats_press(&stats, 0.5).score(&input, 0.5).is_ok());
    // Without the covariance, only a press that does not use it can score.
    let mean_only = foreign_file(
        dir.path(),
        "mean.safetensors",
        &[(QUERY_MEAN, vec![l, h, d], &tensors.query_mean)],
    );
    let error = error_of(&stats_press(&mean_only, 0.5), &input);
    assert!(error.contains("holds no `query_cov`"), "{error}");
    let no_covariance = ExpectedAttentionStats {
        use_covariance: false,
        ..stats_press(&mean_only, 0.5)
    };
    assert!(no_covariance.score(&input, 0.5).is_ok());
    // A shape that is not the model's names both shapes.
    let wrong = foreign_file(
        dir.path(),
        "wrong.safetensors",
        &[(Q_FILTERS, vec![l, h, d], &tensors.query_mean)],
    );
    let error = error_of(&qfilter(&wrong, 0.5), &input);
    assert!(
        error.contains("[4, 4, 8]") && error.contains("[4, 2, 8]"),
        "{error}"
    );
}
