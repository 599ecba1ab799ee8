//! ChunkKV (`chunkkv`): conformance, a plain reference loop, and its edge cases.

use kvpress_core::press::{n_kept, press_from_json, Press, Scorer};
use presses_snapkv::SnapKv;
use presses_testing::{run_conformance, Promises, SyntheticLayer, SyntheticShape};
use presses_wrappers::ChunkKv;

fn snapkv(compression_ratio: f64) -> SnapKv {
    SnapKv {
        compression_ratio,
        window_size: 16,
        kernel_size: 5,
    }
}

fn chunkkv(compression_ratio: f64, chunk_length: usize) -> ChunkKv {
    ChunkKv {
        inner: Box::new(snapkv(compression_ratio)),
        chunk_length,
    }
}

#[test]
fn chunkkv_conforms() {
    run_conformance(
        &|r| Box::new(chunkkv(r, 8)),
        &Promises {
            min_tokens: 17,
            // Whole chunks: the count is a multiple of the chunk length, not floor(T(1-r)).
            uniform_budget: false,
            ..Promises::default()
        },
    );
}

/// ChunkKV written as plainly as possible: chunk means of the head-summed scores, the best
/// `max(1, floor(n_chunks (1 - r)))` chunks (distinct scores), all their tokens.
fn reference_kept(scores: &[Vec<f32>], chunk_length: usize, ratio: f64) -> Vec<u32> {
    let n = scores[0].len();
    let summed: Vec<f32> = (0..n).map(|t| scores.iter().map(|h| h[t]).sum()).collect();
    let mut chunks: Vec<(usize, f32)> = summed
        .chunks(chunk_length)
        .map(|c| c.iter().sum::<f32>() / c.len() as f32)
        .enumerate()
        .collect();
    let n_chunks_kept = ((chunks.len() as f64 * (1.0 - ratio)) as usize).max(1);
    chunks.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept: Vec<u32> = chunks[..n_chunks_kept]
        .iter()
        .flat_map(|&(c, _)| (c * chunk_length..((c + 1) * chunk_length).min(n)).map(|t| t as u32))
        .collect();
    kept.sort_unstable();
    kept
}

#[test]
fn chunkkv_keeps_the_best_chunks_of_the_head_summed_scores() {
    for (n_tokens, chunk_length, ratio) in [(128, 8, 0.5), (131, 10, 0.5), (100, 7, 0.75)] {
        let layer = SyntheticLayer::random(SyntheticShape::small(n_tokens), 3).unwrap();
        let input = layer.input();
        let press = chunkkv(ratio, chunk_length);
        let compression = press.compress(&input).unwrap();
        let scores = snapkv(ratio).score(&input, ratio).unwrap();
        let rows = scores.get(0).unwrap().to_vec2::<f32>().unwrap();
        let expected = reference_kept(&rows, chunk_length, ratio);
        for head in compression.selection.heads() {
            assert_eq!(
                head, &expected,
                "T = {n_tokens}, L = {chunk_length}, r = {ratio}"
            );
        }
        // The reported scores are the inner scorer's.
        let reported = compression.scores.expect("scores");
        assert_eq!(
            reported.to_vec3::<f32>().unwrap(),
            scores.to_vec3::<f32>().unwrap()
        );
    }
}

#[test]
fn a_context_shorter_than_a_chunk_is_compressed_by_the_inner_press() {
    let layer = SyntheticLayer::random(SyntheticShape::small(40), 5).unwrap();
    let input = layer.input();
    let compression = chunkkv(0.5, 64).compress(&input).unwrap();
    let inner = snapkv(0.5).compress(&input).unwrap();
    assert_eq!(compression.selection, inner.selection);
    assert_eq!(compression.selection.uniform_len(), Some(n_kept(40, 0.5)));
}

#[test]
fn chunkkv_refuses_what_kvpress_refuses() {
    let error = press_from_json(r#"{"press": "chunkkv", "chunk_length": 0, "inner": {"press": "snapkv", "compression_ratio": 0.5}}"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("chunk_length must be at least 1"), "{error}");
    let error = press_from_json(r#"{"press": "chunkkv", "inner": {"press": "composed", "presses": [{"press": "snapkv", "compression_ratio": 0.5}]}}"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("must be a scoring press"), "{error}");
    let error = press_from_json(r#"{"press": "chunkkv", "inner": {"press": "key_rerotation", "inner": {"press": "snapkv", "compression_ratio": 0.5}}}"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("re-rotates keys"), "{error}");
    let press = press_from_json(
        r#"{"press": "chunkkv", "inner": {"press": "snapkv", "compression_ratio": 0.25}}"#,
    )
    .unwrap();
    assert_eq!(press.compression_ratio(), 0.25);
}

#[test]
fn chunkkv_kept_sets_on_a_fixed_input() {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 1).unwrap();
    let compression = chunkkv(0.5, 8).compress(&layer.input()).unwrap();
    insta::assert_json_snapshot!(compression.selection.heads());
}
