//! The math of each baseline press on tiny hand-made inputs, its errors, and its config.

mod common;

use candle_core::{Device, Tensor};
use common::{keys, HandMade};
use kvpress_core::press::{default_parameters, find_press, press_from_json, press_to_json};
use kvpress_core::{Press, Result};
use presses_baselines::{
    keydiff_scores, knorm_scores, observed_attention_scores, random_scores, streaming_llm_scores,
    tova_scores, KeyDiff, Knorm, ObservedAttention, RandomPress, StreamingLlm, Tova,
};
use presses_testing::{SyntheticLayer, SyntheticShape};

fn close(actual: &[f32], expected: &[f32]) -> bool {
    actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .all(|(a, e)| (a - e).abs() < 1e-5)
}

fn flat(tensor: &Tensor) -> Result<Vec<f32>> {
    Ok(tensor.flatten_all()?.to_vec1::<f32>()?)
}

// ---------------------------------------------------------------- knorm

#[test]
fn knorm_scores_are_minus_the_key_norms() -> Result<()> {
    let k = keys(&[&[&[3.0, 4.0], &[0.0, 1.0], &[-6.0, 8.0]]])?;
    assert!(close(&flat(&knorm_scores(&k)?)?, &[-5.0, -1.0, -10.0]));
    Ok(())
}

#[test]
fn knorm_keeps_the_smallest_key_norms_per_head() -> Result<()> {
    let k = keys(&[
        &[&[3.0, 0.0], &[1.0, 0.0], &[2.0, 0.0], &[0.5, 0.0]],
        &[&[0.1, 0.0], &[9.0, 0.0], &[0.2, 0.0], &[8.0, 0.0]],
    ])?;
    let layer = HandMade::new(k, 2)?;
    let compression = Knorm {
        compression_ratio: 0.5,
    }
    .compress(&layer.input())?;
    assert_eq!(compression.selection.heads(), &[vec![1, 3], vec![0, 2]]);
    Ok(())
}

// ---------------------------------------------------------------- streaming_llm

#[test]
fn streaming_llm_zeroes_the_tokens_after_the_sinks() -> Result<()> {
    // T = 10 at 0.5: n_pruned = 10 - int(5.0) = 5, tokens 2..7 score 0.
    let scores = streaming_llm_scores(1, 1, 10, 2, 0.5, &Device::Cpu)?;
    assert_eq!(flat(&scores)?, vec![1., 1., 0., 0., 0., 0., 0., 1., 1., 1.]);
    // T = 5, n_sink = 4 at 0.9: int(0.4999..) = 0, so n_pruned = 5, clipped to the context.
    let scores = streaming_llm_scores(1, 1, 5, 4, 0.9, &Device::Cpu)?;
    assert_eq!(flat(&scores)?, vec![1., 1., 1., 1., 0.]);
    Ok(())
}

#[test]
fn streaming_llm_keeps_exactly_the_sinks_and_the_recent_tokens() -> Result<()> {
    let layer = SyntheticLayer::random(SyntheticShape::small(20), 5)?;
    let press = StreamingLlm {
        compression_ratio: 0.5,
        n_sink: 3,
    };
    let compression = press.compress(&layer.input())?;
    let expected: Vec<u32> = (0..3).chain(13..20).collect();
    for head in compression.selection.heads() {
        assert_eq!(head, &expected);
    }
    // At 0.75, 20 * 0.25 = 5 kept: the 3 sinks and the last 2 tokens.
    let compression = StreamingLlm {
        compression_ratio: 0.75,
        n_sink: 3,
    }
    .compress(&layer.input())?;
    assert_eq!(compression.selection.head(0, 1), &[0, 1, 2, 18, 19]);
    Ok(())
}

#[test]
fn streaming_llm_uses_the_ratio_it_is_run_at() -> Result<()> {
    let layer = SyntheticLayer::random(SyntheticShape::small(20), 5)?;
    let press = StreamingLlm {
        compression_ratio: 0.5,
        n_sink: 3,
    };
    let compression = press.compress_at_ratio(&layer.input(), 0.75)?;
    assert_eq!(compression.selection.head(0, 0), &[0, 1, 2, 18, 19]);
    Ok(())
}

#[test]
fn streaming_llm_needs_a_context_longer_than_the_sinks() -> Result<()> {
    let layer = SyntheticLayer::random(SyntheticShape::small(4), 2)?;
    let press = StreamingLlm {
        compression_ratio: 0.5,
        n_sink: 4,
    };
    let error = press.compress(&layer.input()).err().map(|e| e.to_string());
    let error = error.unwrap_or_default();
    assert!(
        error.contains("context (4 tokens) must be longer than n_sink = 4"),
        "{error}"
    );
    let layer = SyntheticLayer::random(SyntheticShape::small(5), 2)?;
    assert!(press.compress(&layer.input()).is_ok());
    Ok(())
}

// ---------------------------------------------------------------- random

#[test]
fn random_scores_are_seeded_and_uniform() -> Result<()> {
    let a = flat(&random_scores(2, 3, 50, Some(7), &Device::Cpu)?)?;
    let b = flat(&random_scores(2, 3, 50, Some(7), &Device::Cpu)?)?;
    let c = flat(&random_scores(2, 3, 50, Some(8), &Device::Cpu)?)?;
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.iter().all(|v| (0.0..1.0).contains(v)));
    let unseeded = flat(&random_scores(1, 1, 64, None, &Device::Cpu)?)?;
    let again = flat(&random_scores(1, 1, 64, None, &Device::Cpu)?)?;
    assert_ne!(unseeded, again);
    Ok(())
}

#[test]
fn random_seed_serializes_as_null_when_absent() -> Result<()> {
    let json = press_to_json(&RandomPress {
        compression_ratio: 0.25,
        seed: None,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| kvpress_core::Error::Config(e.to_string()))?;
    assert_eq!(value.get("seed"), Some(&serde_json::Value::Null));
    let back = press_from_json(r#"{"press": "random", "compression_ratio": 0.25, "seed": 3}"#)?;
    assert!(press_to_json(back.as_ref())?.contains("\"seed\": 3"));
    let unseeded = press_from_json(r#"{"press": "random", "compression_ratio": 0.25}"#)?;
    assert_eq!(press_to_json(unseeded.as_ref())?, json);
    Ok(())
}

// ---------------------------------------------------------------- tova

#[test]
fn tova_averages_the_last_query_over_all_heads_and_keeps_the_last_token() -> Result<()> {
    let zero_rows = vec![0f32; 3 * 4];
    let mut weights = Vec::new();
    for last_row in [
        [0.1f32, 0.6, 0.2, 0.1],
        [0.3, 0.2, 0.4, 0.1],
        [0.2, 0.1, 0.6, 0.1],
        [0.2, 0.3, 0.4, 0.1],
    ] {
        weights.extend_from_slice(&zero_rows);
        weights.extend_from_slice(&last_row);
    }
    let weights = Tensor::from_vec(weights, (1, 4, 4, 4), &Device::Cpu)?;
    let k = keys(&[
        &[&[1.0, 0.0], &[1.0, 0.0], &[1.0, 0.0], &[1.0, 0.0]],
        &[&[0.0, 1.0], &[0.0, 1.0], &[0.0, 1.0], &[0.0, 1.0]],
    ])?;
    let layer = HandMade::new(k, 4)?.with_weights(weights);
    let scores = flat(&tova_scores(&layer.input())?)?;
    // Mean over the four query heads: [0.2, 0.3, 0.4], the same for both KV heads, then 1.4.
    let row = [0.2, 0.3, 0.4, 1.4];
    assert!(close(&scores, &[row, row].concat()), "{scores:?}");
    let compression = Tova {
        compression_ratio: 0.5,
    }
    .compress(&layer.input())?;
    assert_eq!(compression.selection.heads(), &[vec![2, 3], vec![2, 3]]);
    Ok(())
}

#[test]
fn tova_recomputes_the_attention_the_model_would_give() -> Result<()> {
    let layer = SyntheticLayer::random(SyntheticShape::small(32), 9)?;
    let with_weights = layer.clone().with_attention_weights()?;
    let recomputed = flat(&tova_scores(&layer.input())?)?;
    let observed = flat(&tova_scores(&with_weights.input())?)?;
    assert!(
        recomputed
            .iter()
            .zip(&observed)
            .all(|(a, b)| (a - b).abs() < 1e-5),
        "{recomputed:?} vs {observed:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------- observed_attention

#[test]
fn observed_attention_divides_by_the_queries_that_see_each_token() -> Result<()> {
    let weights = Tensor::new(
        &[[
            [[1.0f32, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]],
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        ]],
        &Device::Cpu,
    )?;
    // Head 0: [1.7, 0.8, 0.5] / [3, 2, 1]; head 1: [1, 1, 1] / [3, 2, 1]; then the group mean.
    let scores = flat(&observed_attention_scores(&weights, 1)?)?;
    let expected = [
        (1.7 / 3.0 + 1.0 / 3.0) / 2.0,
        (0.4 + 0.5) / 2.0,
        (0.5 + 1.0) / 2.0,
    ];
    assert!(close(&scores, &expected), "{scores:?}");
    // With one KV head per query head, no averaging.
    let scores = flat(&observed_attention_scores(&weights, 2)?)?;
    assert!(
        close(&scores, &[1.7 / 3.0, 0.4, 0.5, 1.0 / 3.0, 0.5, 1.0]),
        "{scores:?}"
    );
    Ok(())
}

#[test]
fn observed_attention_keeps_the_most_observed_tokens() -> Result<()> {
    let weights = Tensor::new(
        &[[[
            [1.0f32, 0.0, 0.0, 0.0],
            [0.9, 0.1, 0.0, 0.0],
            [0.1, 0.8, 0.1, 0.0],
            [0.1, 0.1, 0.7, 0.1],
        ]]],
        &Device::Cpu,
    )?;
    // Sums [2.1, 1.0, 0.8, 0.1] / [4, 3, 2, 1] = [0.525, 0.333, 0.4, 0.1].
    let layer = HandMade::new(
        keys(&[&[&[1.0, 0.0], &[1.0, 0.0], &[1.0, 0.0], &[1.0, 0.0]]])?,
        1,
    )?
    .with_weights(weights);
    let press = ObservedAttention {
        compression_ratio: 0.5,
    };
    assert!(press.describe().needs_attention_weights);
    let compression = press.compress(&layer.input())?;
    assert_eq!(compression.selection.heads(), &[vec![0, 2]]);
    Ok(())
}

#[test]
fn observed_attention_without_weights_is_an_error() -> Result<()> {
    let layer = SyntheticLayer::random(SyntheticShape::small(16), 1)?;
    let press = ObservedAttention {
        compression_ratio: 0.5,
    };
    let error = press.compress(&layer.input()).err().map(|e| e.to_string());
    let error = error.unwrap_or_default();
    assert!(
        error.contains("observed_attention needs the attention weights"),
        "{error}"
    );
    // Ratio 0 keeps everything without scoring, so it needs no weights.
    assert!(press
        .compress_at_ratio(&layer.input(), 0.0)?
        .selection
        .keeps_everything());
    Ok(())
}

// ---------------------------------------------------------------- keydiff

#[test]
fn keydiff_scores_minus_the_cosine_to_the_mean_normalised_key() -> Result<()> {
    // Unit keys [1,0] x3 and [0,1]: anchor [0.75, 0.25], |anchor| = sqrt(0.625).
    let unit = keys(&[&[&[1.0, 0.0], &[1.0, 0.0], &[1.0, 0.0], &[0.0, 1.0]]])?;
    let norm = 0.625f32.sqrt();
    let expected = [-0.75 / norm, -0.75 / norm, -0.75 / norm, -0.25 / norm];
    assert!(close(&flat(&keydiff_scores(&unit)?)?, &expected));
    // The anchor averages normalised keys, so rescaling keys changes nothing.
    let scaled = keys(&[&[&[2.0, 0.0], &[0.5, 0.0], &[7.0, 0.0], &[0.0, 3.0]]])?;
    assert!(close(&flat(&keydiff_scores(&scaled)?)?, &expected));
    // A zero key has cosine 0 (PyTorch's epsilons), not NaN.
    let with_zero = keys(&[&[&[1.0, 0.0], &[0.0, 0.0]]])?;
    assert!(close(&flat(&keydiff_scores(&with_zero)?)?, &[-1.0, 0.0]));
    Ok(())
}

#[test]
fn keydiff_keeps_the_most_distinctive_keys() -> Result<()> {
    let k = keys(&[&[&[1.0, 0.1], &[1.0, 0.0], &[-1.0, 0.5], &[1.0, 0.05]]])?;
    let layer = HandMade::new(k, 1)?;
    // The anchor leans towards the odd key 2 (about 16 degrees above the x axis), so among the
    // three nearly parallel keys (at 5.7, 0 and 2.9 degrees) key 1 is the least similar to it.
    let compression = KeyDiff {
        compression_ratio: 0.5,
    }
    .compress(&layer.input())?;
    assert_eq!(compression.selection.heads()[0][..], [1, 2]);
    Ok(())
}

// ---------------------------------------------------------------- registry and configs

#[test]
fn every_press_is_registered_with_its_parameters() -> Result<()> {
    let expected: [(&str, &[&str]); 6] = [
        ("knorm", &["compression_ratio"]),
        ("streaming_llm", &["compression_ratio", "n_sink"]),
        ("random", &["compression_ratio", "seed"]),
        ("tova", &["compression_ratio"]),
        ("observed_attention", &["compression_ratio"]),
        ("keydiff", &["compression_ratio"]),
    ];
    for (name, fields) in expected {
        let registration = find_press(name)
            .ok_or_else(|| kvpress_core::Error::Config(format!("{name} is not registered")))?;
        assert!(!registration.description.is_empty());
        let parameters = default_parameters(registration)?;
        let mut keys: Vec<&str> = parameters.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut fields = fields.to_vec();
        fields.sort_unstable();
        assert_eq!(keys, fields, "{name}");
        assert_eq!(parameters["compression_ratio"], 0.0, "{name}");
    }
    assert_eq!(
        default_parameters(find_press("streaming_llm").unwrap())?["n_sink"],
        4
    );
    Ok(())
}

#[test]
fn configs_build_the_presses_and_reject_unknown_fields() -> Result<()> {
    let press =
        press_from_json(r#"{"press": "streaming_llm", "compression_ratio": 0.5, "n_sink": 8}"#)?;
    assert!(press_to_json(press.as_ref())?.contains("\"n_sink\": 8"));
    let error = press_from_json(r#"{"press": "knorm", "compression_ratio": 0.5, "window": 3}"#)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("window"), "{error}");
    let error = press_from_json(r#"{"press": "observed_attention", "compression_ratio": 1.0}"#)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("compression_ratio"), "{error}");
    Ok(())
}
