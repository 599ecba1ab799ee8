//! The conformance suite for `finch`, its kept sets on a fixed input, its scores against a plain
//! loop written from kvpress's Python, the chunked selection's guard and the key re-rotation.

use candle_core::{DType, Tensor};
use kvpress_core::press::n_kept;
use kvpress_core::Press;
use presses_finch::{finch_scores, Finch};
use presses_testing::{run_conformance, Promises, SyntheticLayer, SyntheticShape, QUESTION_TOKENS};

fn finch(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(Finch {
        compression_ratio,
        ..Finch::default()
    })
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let (a, b, n) = t.dims3().unwrap();
    t.to_dtype(DType::F32)
        .unwrap()
        .reshape((a * b, n))
        .unwrap()
        .to_vec2()
        .unwrap()
}

#[test]
fn finch_conforms() {
    run_conformance(
        &finch,
        &Promises {
            always_kept: |n| (n - QUESTION_TOKENS..n).map(|i| i as u32).collect(),
            ..Promises::default()
        },
    );
}

#[test]
fn finch_kept_sets_on_a_fixed_input() {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 1)
        .unwrap()
        .with_question_tokens(6);
    let kept = presses_testing::kept_sets(finch(0.5).as_ref(), layer).unwrap();
    insta::assert_json_snapshot!(kept);
}

/// kvpress's `FinchPress.score` as plain loops: softmax of each question query over the keys it
/// sees, the context columns times the query's position, mean over the question's queries and
/// over the query heads of each KV head; the question's tokens get the maximum plus one.
fn plain_scores(layer: &SyntheticLayer, question: usize, normalize: bool) -> Vec<Vec<f32>> {
    let input = layer.input();
    let q = input.queries.get(0).unwrap().to_vec3::<f32>().unwrap();
    let k = input.keys.get(0).unwrap().to_vec3::<f32>().unwrap();
    let (n_heads, n_kv) = (input.shape.n_heads, input.shape.n_kv_heads);
    let group = n_heads / n_kv;
    let n = k[0].len();
    let d = k[0][0].len();
    let context = n - question;
    let mut per_head = vec![vec![0f64; context]; n_heads];
    for (h, scores) in per_head.iter_mut().enumerate() {
        for i in 0..question {
            let position = context + i;
            let logits: Vec<f64> = (0..=position)
                .map(|j| {
                    let dot: f64 = (0..d)
                        .map(|c| q[h][position][c] as f64 * k[h / group][j][c] as f64)
                        .sum();
                    dot / (d as f64).sqrt()
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::MIN, f64::max);
            let total: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            let scale = if normalize { position as f64 } else { 1.0 };
            for (j, score) in scores.iter_mut().enumerate() {
                *score += scale * (logits[j] - max).exp() / total / question as f64;
            }
        }
    }
    let mut out: Vec<Vec<f32>> = (0..n_kv)
        .map(|kv| {
            (0..context)
                .map(|j| {
                    let sum: f64 = (0..group).map(|g| per_head[kv * group + g][j]).sum();
                    (sum / group as f64) as f32
                })
                .collect()
        })
        .collect();
    let max = out.iter().flatten().cloned().fold(f32::MIN, f32::max);
    for row in &mut out {
        row.extend(std::iter::repeat_n(max + 1.0, question));
    }
    out
}

#[test]
fn scores_match_kvpress_math_written_as_loops() {
    let layer = SyntheticLayer::random(SyntheticShape::small(40), 5).unwrap();
    for normalize in [true, false] {
        let got = rows(&finch_scores(&layer.input(), 7, normalize).unwrap());
        let want = plain_scores(&layer, 7, normalize);
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "normalize {normalize}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn without_the_question_finch_refuses_to_guess() {
    let layer = SyntheticLayer::random(SyntheticShape::small(32), 2).unwrap();
    let error = finch(0.5).compress(&layer.input()).unwrap_err();
    assert!(error.to_string().contains("no question"), "{error}");
}

#[test]
fn chunks_keep_their_share_and_too_short_chunks_are_refused() {
    let layer = SyntheticLayer::random(SyntheticShape::small(64), 3)
        .unwrap()
        .with_question_tokens(8);
    let chunked = Finch {
        compression_ratio: 0.5,
        chunk_length: Some(20),
        ..Finch::default()
    };
    let compression = chunked.compress(&layer.input()).unwrap();
    // Chunks of 20, 20, 20 and 4 tokens keep 10, 10, 10 and 2.
    for head in compression.selection.heads() {
        assert_eq!(head.len(), 32);
        for (start, share) in [(0u32, 10), (20, 10), (40, 10), (60, 2)] {
            let in_chunk = head
                .iter()
                .filter(|&&i| (start..start + 20).contains(&i))
                .count();
            assert_eq!(in_chunk, share, "chunk at {start}");
        }
    }
    let too_short = Finch {
        chunk_length: Some(16),
        ..chunked.clone()
    };
    let error = too_short.compress(&layer.input()).unwrap_err();
    assert!(
        error.to_string().contains("chunk_length 16 must exceed"),
        "{error}"
    );
    let zero = Finch {
        chunk_length: Some(0),
        ..chunked
    };
    assert!(zero
        .validate()
        .unwrap_err()
        .to_string()
        .contains("chunk_length"));
}

#[test]
fn kept_keys_are_rerotated_to_consecutive_positions_unless_asked_not_to() {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 4)
        .unwrap()
        .with_question_tokens(6);
    let input = layer.input();
    let rerotated = finch(0.5).compress(&input).unwrap();
    let keys = rerotated.keys.expect("re-rotated keys");
    assert_eq!(keys.dim(2).unwrap(), n_kept(48, 0.5));
    let expected = presses_wrappers::rerotate_keys(
        &rerotated.selection.gather(input.keys).unwrap(),
        &rerotated.selection,
        input.rotary.inv_freq(),
    )
    .unwrap();
    let diff = (keys - expected).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    let plain = Finch {
        compression_ratio: 0.5,
        rerotate_keys: false,
        ..Finch::default()
    };
    assert!(!plain.describe().rerotates_keys);
    assert!(plain.compress(&input).unwrap().keys.is_none());
}
