//! SimLayerKV (`simlayerkv`): the lazy-layer decision against a plain computation, what a lazy
//! layer keeps, the notes, and the checks.

use candle_core::{DType, Tensor, D};
use kvpress_core::press::{press_from_json, Press, RatioControl};
use presses_baselines::SimLayerKv;
use presses_testing::{SyntheticLayer, SyntheticShape};

fn press(lazy_threshold: f64) -> SimLayerKv {
    SimLayerKv {
        lazy_threshold,
        n_last: 2,
        n_recent: 20,
        n_initial: 3,
    }
}

/// The last `n_last` queries' causal softmax over all keys, their own columns dropped, averaged
/// over heads and queries; the share on the first `n_initial` and the last `n_recent` of the
/// rest.
fn plain_lazy_score(layer: &SyntheticLayer, p: &SimLayerKv) -> f32 {
    let input = layer.input();
    let (n, group, d) = (
        input.n_tokens().unwrap(),
        input.shape.group_size(),
        input.shape.head_dim,
    );
    let mut total = vec![0f32; n - p.n_last];
    for head in 0..input.shape.n_heads {
        let keys = input.keys.get(0).unwrap().get(head / group).unwrap();
        for q in 0..p.n_last {
            let position = n - p.n_last + q;
            let query = input
                .queries
                .get(0)
                .unwrap()
                .get(head)
                .unwrap()
                .get(position)
                .unwrap();
            let logits = keys
                .narrow(0, 0, position + 1)
                .unwrap()
                .matmul(&query.unsqueeze(1).unwrap())
                .unwrap()
                .squeeze(1)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let logits = (logits / (d as f64).sqrt()).unwrap();
            let weights = candle_nn_softmax(&logits);
            for (t, w) in weights.iter().take(n - p.n_last).enumerate() {
                total[t] += *w as f32;
            }
        }
    }
    let count = (input.shape.n_heads * p.n_last) as f32;
    let mean: Vec<f32> = total.iter().map(|t| t / count).collect();
    mean[..p.n_initial].iter().sum::<f32>() + mean[mean.len() - p.n_recent..].iter().sum::<f32>()
}

fn candle_nn_softmax(logits: &Tensor) -> Vec<f64> {
    let max = logits.max(D::Minus1).unwrap().to_scalar::<f64>().unwrap();
    let exps: Vec<f64> = logits
        .to_vec1::<f64>()
        .unwrap()
        .iter()
        .map(|x| (x - max).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[test]
fn the_lazy_score_is_the_attention_share_of_initial_and_recent_tokens() {
    let layer = SyntheticLayer::random(SyntheticShape::small(64), 6).unwrap();
    let p = press(0.5);
    let got = p.lazy_score(&layer.input()).unwrap();
    let want = plain_lazy_score(&layer, &p);
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
}

#[test]
fn a_lazy_layer_keeps_its_initial_and_recent_tokens() {
    let layer = SyntheticLayer::random(SyntheticShape::small(64), 6).unwrap();
    let input = layer.input();
    let score = press(0.5).lazy_score(&input).unwrap() as f64;
    let lazy = press(score - 1e-4).compress(&input).unwrap();
    let expected: Vec<u32> = (0..3).chain(64 - 18..64).collect();
    for head in lazy.selection.heads() {
        assert_eq!(head, &expected);
    }
    let note = |c: &kvpress_core::press::Compression, name: &str| {
        c.notes
            .iter()
            .find(|n| n.name == name)
            .unwrap()
            .value
            .clone()
    };
    assert_eq!(note(&lazy, "lazy_layers"), serde_json::json!(true));
    assert!((note(&lazy, "lazy_scores").as_f64().unwrap() - score).abs() < 1e-6);
    let busy = press((score + 1e-4).min(1.0)).compress(&input).unwrap();
    assert!(busy.selection.keeps_everything());
    assert_eq!(note(&busy, "lazy_layers"), serde_json::json!(false));
    // Threshold 1 (kvpress's default) never evaluates; neither does a short context.
    for (p, n) in [(press(1.0), 64), (press(0.0), 25)] {
        let layer = SyntheticLayer::random(SyntheticShape::small(n), 6).unwrap();
        let c = p.compress(&layer.input()).unwrap();
        assert!(c.selection.keeps_everything());
        assert_eq!(note(&c, "lazy_scores"), serde_json::Value::Null);
        assert_eq!(note(&c, "lazy_layers"), serde_json::json!(false));
    }
    // Just above the minimum length (n_initial + n_recent + n_last = 25) it is evaluated.
    let layer = SyntheticLayer::random(SyntheticShape::small(26), 6).unwrap();
    let c = press(0.0).compress(&layer.input()).unwrap();
    assert_eq!(c.selection.uniform_len(), Some(3 + 18));
}

#[test]
fn simlayerkv_owns_its_ratio_and_checks_its_parameters() {
    let p = press(0.9);
    let description = p.describe();
    assert_eq!(description.ratio, RatioControl::OwnedByPress);
    assert!(description.compresses_prefill);
    assert!(!press(1.0).describe().compresses_prefill);
    let layer = SyntheticLayer::random(SyntheticShape::small(64), 6).unwrap();
    assert!(p.compress_at_ratio(&layer.input(), 0.5).is_err());
    for (config, phrase) in [
        (
            r#"{"press": "simlayerkv", "lazy_threshold": 1.5}"#,
            "lazy_threshold 1.5 is outside [0, 1]",
        ),
        (
            r#"{"press": "simlayerkv", "n_last": 0}"#,
            "n_last must be at least 1",
        ),
        (
            r#"{"press": "simlayerkv", "n_recent": 1}"#,
            "n_recent (1) must be greater than n_last (1)",
        ),
    ] {
        let error = press_from_json(config).unwrap_err().to_string();
        assert!(error.contains(phrase), "{error}");
    }
    let loaded = press_from_json(r#"{"press": "simlayerkv", "lazy_threshold": 0.9}"#).unwrap();
    assert_eq!(
        kvpress_core::press::press_to_json(loaded.as_ref()).unwrap(),
        kvpress_core::press::press_to_json(&SimLayerKv {
            lazy_threshold: 0.9,
            ..SimLayerKv::default()
        })
        .unwrap()
    );
}
