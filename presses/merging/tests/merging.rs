//! The merging press: the conformance suite, the merge against a plain transcription of
//! kvpress's `MergingPress.merge`, its gates, and its config.

use kvpress_core::press::{press_from_json, press_to_json, Press};
use presses_baselines::Knorm;
use presses_merging::merge::{merged_values, MergeGates};
use presses_merging::Merging;
use presses_snapkv::SnapKv;
use presses_testing::{run_conformance, Promises, SyntheticLayer, SyntheticShape};

fn merging_knorm(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(Merging::new(Box::new(Knorm { compression_ratio })))
}

#[test]
fn merging_conforms() {
    run_conformance(&merging_knorm, &Promises::default());
    run_conformance(
        &|compression_ratio| {
            Box::new(Merging::new(Box::new(SnapKv {
                compression_ratio,
                window_size: 8,
                ..SnapKv::default()
            })))
        },
        &Promises {
            always_kept: |n| (n as u32 - 8..n as u32).collect(),
            min_tokens: 9,
            uniform_budget: true,
        },
    );
}

/// kvpress's merge for one head, line by line with f64 sums: kept indices in any order,
/// returns the kept values in that order.
fn reference_merge(keys: &[Vec<f32>], values: &[Vec<f32>], kept: &[usize]) -> Vec<Vec<f32>> {
    let eps = 1e-6f32;
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt() as f32;
    let unit = |v: &[f32]| -> Vec<f32> {
        let n = norm(v).max(eps);
        v.iter().map(|x| x / n).collect()
    };
    let evicted: Vec<usize> = (0..keys.len()).filter(|t| !kept.contains(t)).collect();
    let kept_unit: Vec<Vec<f32>> = kept.iter().map(|&t| unit(&keys[t])).collect();
    let mut kept_values: Vec<Vec<f32>> = kept.iter().map(|&t| values[t].clone()).collect();
    let mut accum = vec![vec![0f32; values[0].len()]; kept.len()];
    let mut weight_accum = vec![0f32; kept.len()];
    for &e in &evicted {
        let eu = unit(&keys[e]);
        let sims: Vec<f32> = kept_unit
            .iter()
            .map(|k| k.iter().zip(&eu).map(|(a, b)| (a * b) as f64).sum::<f64>() as f32)
            .collect();
        let (target, max_sim) =
            sims.iter()
                .copied()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, s)| if s > b.1 { (i, s) } else { b },
                );
        let evict_norm = norm(&values[e]);
        let target_norm = norm(&kept_values[target]);
        let weight = max_sim.max(0.0) * evict_norm / (evict_norm + target_norm + eps);
        for (a, v) in accum[target].iter_mut().zip(&values[e]) {
            *a += weight * v;
        }
        weight_accum[target] += weight;
    }
    for (k, &w) in weight_accum.iter().enumerate() {
        if w > 0.0 {
            for (v, a) in kept_values[k].iter_mut().zip(&accum[k]) {
                *v = (*v + a) / (1.0 + w);
            }
        }
    }
    kept_values
}

fn rows(t: &candle_core::Tensor, head: usize) -> Vec<Vec<f32>> {
    t.get(0)
        .unwrap()
        .get(head)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

#[test]
fn merged_values_match_kvpress_merge() {
    let layer = SyntheticLayer::random(SyntheticShape::small(64), 21).unwrap();
    let input = layer.input();
    let compression = merging_knorm(0.5).compress(&input).unwrap();
    let selection = &compression.selection;
    let merged = selection.values().expect("merged values");
    for head in 0..2 {
        let kept: Vec<usize> = selection.heads()[head]
            .iter()
            .map(|&t| t as usize)
            .collect();
        let want = reference_merge(&rows(input.keys, head), &rows(input.values, head), &kept);
        let got = rows(merged, head);
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "head {head}: {g} vs {w}"
            );
        }
    }
    // The tokens are KNorm's, the keys unchanged, the norms reported for recorded layers.
    let knorm = Knorm {
        compression_ratio: 0.5,
    }
    .compress(&input)
    .unwrap();
    assert_eq!(selection.heads(), knorm.selection.heads());
    assert!(compression.keys.is_none());
    let norms: Vec<Vec<f32>> = serde_json::from_value(compression.notes[0].value.clone()).unwrap();
    assert_eq!(
        (compression.notes[0].name, norms.len(), norms[0].len()),
        ("value_norms", 2, 32)
    );
    let first: f32 = rows(merged, 0)[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norms[0][0] - first).abs() < 1e-5);
}

#[test]
fn gates_limit_what_merges() {
    let layer = SyntheticLayer::random(SyntheticShape::small(64), 23).unwrap();
    let input = layer.input();
    let selection = Knorm {
        compression_ratio: 0.5,
    }
    .compress(&input)
    .unwrap()
    .selection;
    let kept_values = selection.gather(input.values).unwrap();
    let merge = |similarity_threshold, merge_fraction| {
        let gates = MergeGates {
            similarity_threshold,
            merge_fraction,
        };
        merged_values(input.keys, input.values, &selection, gates).unwrap()
    };
    let changed = |t: &candle_core::Tensor| -> usize {
        let diff = (t - &kept_values).unwrap().abs().unwrap().sum(3).unwrap();
        let diff = diff.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        diff.iter().filter(|&&d| d > 0.0).count()
    };
    let (all, none, half) = (merge(0.0, 1.0), merge(1.0, 1.0), merge(0.0, 0.5));
    assert!(changed(&all) > 0, "merging changes kept values");
    assert_eq!(changed(&none), 0, "no key is that similar");
    assert!(changed(&half) > 0 && changed(&half) <= changed(&all));
    let zero = merging_knorm(0.0).compress(&input).unwrap();
    assert!(zero.selection.keeps_everything() && zero.selection.values().is_none());
}

#[test]
fn config_uses_kvpress_fields_and_bad_values_are_refused() {
    let json = r#"{"press": "merging", "similarity_threshold": 0.0, "merge_fraction": 1.0,
        "inner": {"press": "knorm", "compression_ratio": 0.5}}"#;
    let press = press_from_json(json).unwrap();
    assert_eq!(press.compression_ratio(), 0.5);
    assert!(press.describe().ratio == kvpress_core::press::RatioControl::Settable);
    assert!(
        press.scorer().is_none(),
        "kvpress's MergingPress is not a scorer"
    );
    let back = press_from_json(&press_to_json(press.as_ref()).unwrap()).unwrap();
    assert_eq!(
        press_to_json(back.as_ref()).unwrap(),
        press_to_json(press.as_ref()).unwrap()
    );
    for (field, bad) in [
        ("similarity_threshold", r#""similarity_threshold": 1.5"#),
        ("merge_fraction", r#""merge_fraction": 0.0"#),
    ] {
        let json = format!(r#"{{"press": "merging", {bad}, "inner": {{"press": "knorm"}}}}"#);
        let error = press_from_json(&json)
            .and_then(|p| p.validate())
            .unwrap_err();
        assert!(error.to_string().contains(field), "{error}");
    }
    let not_a_scorer = Merging::new(Box::new(kvpress_core::NoPress::default()));
    let error = not_a_scorer.validate().unwrap_err();
    assert!(error.to_string().contains("scoring press"), "{error}");
}
