//! Comparing a trace of ours with a kvpress fixture entry: kept sets by Jaccard overlap, scores
//! with a relative tolerance, logits with an absolute one.
//!
//! Included by each test that needs it: `#[path = "common/compare.rs"] mod compare;`.

// Each test target uses a part of this module.
#![allow(dead_code)]

use std::collections::BTreeSet;

use kvpress::hooks::trace::PressTrace;
use serde_json::Value;

/// |a ∩ b| / |a ∪ b| of two index sets (1 when both are empty).
pub fn jaccard(a: &[u32], b: &[u32]) -> f64 {
    let a: BTreeSet<u32> = a.iter().copied().collect();
    let b: BTreeSet<u32> = b.iter().copied().collect();
    let union = a.union(&b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(&b).count() as f64 / union as f64
}

/// Every number of a (nested) JSON array, in order.
pub fn floats(value: &Value) -> Vec<f32> {
    let mut out = Vec::new();
    flatten(value, &mut out);
    out
}

fn flatten(value: &Value, out: &mut Vec<f32>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        Value::Number(n) => out.push(n.as_f64().expect("a number") as f32),
        other => panic!("expected numbers, found {other}"),
    }
}

/// The largest |a_i - b_i|.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The worst score error in units of the tolerance, |a - b| / max(1e-5, 1e-3 |b|): at most 1
/// passes.
pub fn worst_score_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "score count");
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).abs() / (1e-3 * (w as f64).abs()).max(1e-5))
        .fold(0.0, f64::max)
}

/// [`worst_score_error`] of per-iteration scores, lists of `{candidates: [kv_head][i], scores:
/// [kv_head][i]}` (kvpress's `BlockPress`), matched by candidate token; iterations whose
/// candidates differ (as sets) count as infinitely far.
pub fn iteration_score_error(got: &Value, want: &Value) -> f64 {
    let (Some(got), Some(want)) = (got.as_array(), want.as_array()) else {
        return f64::INFINITY;
    };
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let heads = |v: &Value, field: &str| v[field].as_array().cloned().unwrap_or_default();
    let mut worst = 0.0f64;
    for (g, w) in got.iter().zip(want) {
        let (g_candidates, w_candidates) = (heads(g, "candidates"), heads(w, "candidates"));
        let (g_scores, w_scores) = (heads(g, "scores"), heads(w, "scores"));
        if g_candidates.len() != w_candidates.len() || g_candidates.is_empty() {
            return f64::INFINITY;
        }
        for head in 0..w_candidates.len() {
            let score_of: std::collections::HashMap<u64, f32> = g_candidates[head]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .zip(floats(&g_scores[head]))
                .collect();
            let w_tokens: Vec<u64> = w_candidates[head]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .collect();
            if score_of.len() != w_tokens.len() {
                return f64::INFINITY;
            }
            for (token, want_score) in w_tokens.iter().zip(floats(&w_scores[head])) {
                let Some(&got_score) = score_of.get(token) else {
                    return f64::INFINITY;
                };
                worst = worst.max(worst_score_error(&[got_score], &[want_score]));
            }
        }
    }
    worst
}

/// How a press's trace compares with kvpress's fixture entry.
#[derive(Debug)]
pub struct Comparison {
    /// Mean and smallest Jaccard overlap of the kept sets over layers and heads.
    pub mean_jaccard: f64,
    pub min_jaccard: f64,
    /// [`worst_score_error`] over the recorded layers' scores (0 when the fixture has none).
    pub worst_score_error: f64,
    /// Cache lengths per layer equal.
    pub lengths_equal: bool,
    /// Greedy answers equal.
    pub answer_equal: bool,
    /// Largest difference of the first answer token's logits (`None` when the fixture has none).
    pub first_logits_error: Option<f32>,
}

/// Compares `got` with the fixture entry `want` (kept, scores, cache_lengths, answer_ids,
/// answer_first_logits).
pub fn compare(got: &PressTrace, want: &Value) -> Comparison {
    let want_kept: Vec<Vec<Vec<u32>>> = serde_json::from_value(want["kept"].clone()).unwrap();
    assert_eq!(got.kept.len(), want_kept.len(), "number of layers");
    let jaccards: Vec<f64> = got
        .kept
        .iter()
        .zip(&want_kept)
        .flat_map(|(g, w)| g.iter().zip(w).map(|(g, w)| jaccard(g, w)))
        .collect();
    let mut worst = 0.0f64;
    if let Some(layers) = want["scores"].as_object() {
        for (layer, want_scores) in layers {
            if want_scores.get(0).is_some_and(Value::is_object) {
                // Per-iteration scores (`block`), which the press reports as a note.
                let got_iterations = &got.notes.get("scores").unwrap_or(&Value::Null)[layer];
                worst = worst.max(iteration_score_error(got_iterations, want_scores));
                continue;
            }
            let got_scores = got
                .scores
                .get(layer)
                .unwrap_or_else(|| panic!("no scores recorded for layer {layer}"));
            let got_scores: Vec<f32> = got_scores.iter().flatten().copied().collect();
            worst = worst.max(worst_score_error(&got_scores, &floats(want_scores)));
        }
    }
    let want_lengths: Vec<usize> = serde_json::from_value(want["cache_lengths"].clone()).unwrap();
    let want_answer: Vec<u32> = serde_json::from_value(want["answer_ids"].clone()).unwrap();
    let first_logits_error = want
        .get("answer_first_logits")
        .map(|logits| max_abs_diff(&got.answer_first_logits, &floats(logits)));
    Comparison {
        mean_jaccard: jaccards.iter().sum::<f64>() / jaccards.len() as f64,
        min_jaccard: jaccards.iter().copied().fold(1.0, f64::min),
        worst_score_error: worst,
        lengths_equal: got.cache_lengths == want_lengths,
        answer_equal: got.answer_ids == want_answer,
        first_logits_error,
    }
}
