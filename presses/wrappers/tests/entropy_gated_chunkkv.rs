//! The entropy-gated ChunkKV (`entropy_gated_chunkkv`): conformance and its budget.

use kvpress_core::press::{n_kept, press_from_json, Press};
use presses_baselines as _;
use presses_snapkv::SnapKv;
use presses_testing::{run_conformance, Promises, SyntheticLayer, SyntheticShape};
use presses_wrappers::EntropyGatedChunkKv;

fn press(compression_ratio: f64) -> EntropyGatedChunkKv {
    EntropyGatedChunkKv {
        inner: Box::new(SnapKv {
            compression_ratio,
            window_size: 16,
            kernel_size: 5,
        }),
        chunk_length: 10,
        low_entropy_chunk_length: 4,
    }
}

#[test]
fn entropy_gated_chunkkv_conforms() {
    run_conformance(
        &|r| Box::new(press(r)),
        &Promises {
            min_tokens: 17,
            ..Promises::default()
        },
    );
}

#[test]
fn every_head_keeps_the_same_exact_budget() {
    for n_tokens in [17, 64, 101, 256] {
        let layer = SyntheticLayer::random(SyntheticShape::small(n_tokens), 9).unwrap();
        for ratio in [0.1, 0.5, 0.9] {
            let selection = press(ratio).compress(&layer.input()).unwrap().selection;
            assert_eq!(selection.uniform_len(), Some(n_kept(n_tokens, ratio)));
            assert!(selection.heads().iter().all(|h| h == &selection.heads()[0]));
        }
    }
}

#[test]
fn entropy_gated_chunkkv_checks_its_lengths() {
    for (chunk, low) in [(4, 4), (10, 0), (3, 5)] {
        let config = format!(
            r#"{{"press": "entropy_gated_chunkkv", "chunk_length": {chunk}, "low_entropy_chunk_length": {low},
                "inner": {{"press": "snapkv", "compression_ratio": 0.5}}}}"#
        );
        let error = press_from_json(&config).unwrap_err().to_string();
        assert!(error.contains("must be greater than"), "{error}");
    }
    let defaults = press_from_json(
        r#"{"press": "entropy_gated_chunkkv", "inner": {"press": "knorm", "compression_ratio": 0.5}}"#,
    );
    assert!(defaults.is_ok(), "{defaults:?}");
}

#[test]
fn entropy_gated_chunkkv_kept_sets_on_a_fixed_input() {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 1).unwrap();
    let compression = press(0.5).compress(&layer.input()).unwrap();
    insta::assert_json_snapshot!(compression.selection.heads());
}
