//! Block-wise iterative compression (`block`): conformance, a plain reference loop with
//! KeyDiff, and the iterations it reports.

use candle_core::Tensor;
use kvpress_core::press::{n_kept, press_from_json, Press};
use presses_baselines::{keydiff_scores, KeyDiff, Knorm};
use presses_testing::{run_conformance, Promises, SyntheticLayer, SyntheticShape};
use presses_wrappers::Block;

fn block(compression_ratio: f64, block_size: usize) -> Block {
    Block {
        inner: Box::new(KeyDiff { compression_ratio }),
        block_size,
    }
}

#[test]
fn block_conforms() {
    run_conformance(&|r| Box::new(block(r, 32)), &Promises::default());
    run_conformance(
        &|r| {
            Box::new(Block {
                inner: Box::new(Knorm {
                    compression_ratio: r,
                }),
                block_size: 7,
            })
        },
        &Promises::default(),
    );
}

/// kvpress's loop over one head's keys `(n_tokens, dim)`: start from the first `n_kept`, add a
/// block, keep the `n_kept` best KeyDiff scores (best first), repeat.
fn reference_head(keys: &Tensor, keep: usize, block_size: usize) -> Vec<u32> {
    let n_tokens = keys.dim(0).unwrap();
    let mut kept: Vec<u32> = (0..keep as u32).collect();
    for start in (keep..n_tokens).step_by(block_size) {
        let end = (start + block_size).min(n_tokens);
        let candidates: Vec<u32> = kept
            .iter()
            .copied()
            .chain(start as u32..end as u32)
            .collect();
        let index = Tensor::new(candidates.as_slice(), keys.device()).unwrap();
        let gathered = keys.index_select(&index, 0).unwrap();
        let scores = keydiff_scores(&gathered.unsqueeze(0).unwrap().unsqueeze(0).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        kept = order[..keep].iter().map(|&i| candidates[i]).collect();
    }
    kept.sort_unstable();
    kept
}

#[test]
fn block_matches_a_plain_loop() {
    for (n_tokens, block_size, ratio) in
        [(200, 32, 0.5), (97, 10, 0.25), (64, 128, 0.5), (50, 3, 0.9)]
    {
        let layer = SyntheticLayer::random(SyntheticShape::small(n_tokens), 4).unwrap();
        let input = layer.input();
        let selection = block(ratio, block_size).compress(&input).unwrap().selection;
        let keep = n_kept(n_tokens, ratio);
        for kv_head in 0..2 {
            let keys = input.keys.get(0).unwrap().get(kv_head).unwrap();
            assert_eq!(
                selection.head(0, kv_head),
                reference_head(&keys, keep, block_size).as_slice(),
                "T = {n_tokens}, block {block_size}, r = {ratio}, head {kv_head}"
            );
        }
    }
}

#[test]
fn block_reports_every_iteration() {
    // kvpress's fixture setting: T = 1175 at 0.5 with blocks of 128 gives 5 iterations of 715,
    // 715, 715, 715 and 663 candidates; here T = 300, keep 150, blocks of 64: 150 + 64 (x2),
    // then 150 + 22.
    let layer = SyntheticLayer::random(SyntheticShape::small(300), 8).unwrap();
    let compression = block(0.5, 64).compress(&layer.input()).unwrap();
    assert!(compression.scores.is_none(), "no per-token scores");
    let note = compression
        .notes
        .iter()
        .find(|n| n.name == "scores")
        .expect("the iterations note");
    let iterations = note.value.as_array().unwrap();
    let sizes: Vec<usize> = iterations
        .iter()
        .map(|it| it["candidates"][0].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![214, 214, 172]);
    for it in iterations {
        assert_eq!(
            it["candidates"].as_array().unwrap().len(),
            2,
            "one list per KV head"
        );
        assert_eq!(
            it["scores"][1].as_array().unwrap().len(),
            it["candidates"][1].as_array().unwrap().len()
        );
    }
    // The first iteration's candidates: the first 150 tokens, then the block.
    let first: Vec<u64> = iterations[0]["candidates"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(first, (0..214).collect::<Vec<u64>>());
}

#[test]
fn block_refuses_what_it_cannot_run() {
    let error = press_from_json(r#"{"press": "block", "block_size": 0, "inner": {"press": "keydiff", "compression_ratio": 0.5}}"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("block_size must be at least 1"), "{error}");
    let error = press_from_json(
        r#"{"press": "block", "inner": {"press": "observed_attention", "compression_ratio": 0.5}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("attention weights"), "{error}");
}

#[test]
fn block_kept_sets_on_a_fixed_input() {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 1).unwrap();
    let compression = block(0.5, 8).compress(&layer.input()).unwrap();
    insta::assert_json_snapshot!(compression.selection.heads());
}
