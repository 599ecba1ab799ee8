use candle_core::DType;
use kvpress_core::press::{n_kept, press_from_json, Press};
use kvpress_core::RotaryEmbedding;
use presses_snapkv::SnapKv;
use presses_testing::{
    run_conformance, run_decoding_conformance, Promises, SyntheticLayer, SyntheticShape,
};
use presses_wrappers::{
    Chunked, Composed, CompressionRatioDecoding, Decoding, KeyRerotation, PerLayer, PrefillDecoding,
};

fn snapkv(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(SnapKv {
        compression_ratio,
        window_size: 16,
        kernel_size: 5,
    })
}

fn window_kept(n: usize) -> Vec<u32> {
    (n as u32 - 16..n as u32).collect()
}

fn layer(n_tokens: usize) -> SyntheticLayer {
    SyntheticLayer::random(SyntheticShape::small(n_tokens), 5).unwrap()
}

#[test]
fn key_rerotation_conforms() {
    run_conformance(
        &|r| Box::new(KeyRerotation { inner: snapkv(r) }),
        &Promises {
            always_kept: window_kept,
            min_tokens: 17,
            ..Promises::default()
        },
    );
}

#[test]
fn chunked_conforms() {
    run_conformance(
        &|r| {
            Box::new(Chunked {
                inner: snapkv(r),
                chunk_length: 128,
                queries_at_own_positions: false,
            })
        },
        &Promises {
            min_tokens: 17,
            uniform_budget: false,
            ..Promises::default()
        },
    );
}

#[test]
fn composed_conforms() {
    run_conformance(
        &|r| {
            Box::new(Composed {
                presses: vec![snapkv(r)],
            })
        },
        &Promises {
            always_kept: window_kept,
            min_tokens: 17,
            ..Promises::default()
        },
    );
}

fn decoding(inner: Box<dyn Press>) -> Box<dyn Press> {
    Box::new(Decoding {
        inner,
        compression_interval: 8,
        target_size: 64,
        hidden_states_buffer_size: 16,
    })
}

#[test]
fn decode_time_presses_conform() {
    run_decoding_conformance(&|r| decoding(snapkv(r)), true);
    run_decoding_conformance(
        &|r| {
            Box::new(CompressionRatioDecoding {
                inner: snapkv(r),
                target_compression_ratio: 0.5,
                compression_interval: 8,
                hidden_states_buffer_size: 16,
            })
        },
        true,
    );
    // A decode-time member inside composed runs while decoding; the prefill member compresses.
    run_decoding_conformance(
        &|r| {
            Box::new(Composed {
                presses: vec![snapkv(0.5), decoding(snapkv(r))],
            })
        },
        false,
    );
}

#[test]
fn prefill_decoding_conforms() {
    let make = |r| -> Box<dyn Press> {
        Box::new(PrefillDecoding {
            prefilling: Some(snapkv(r)),
            decoding: Some(decoding(snapkv(0.5))),
        })
    };
    run_conformance(
        &make,
        &Promises {
            always_kept: window_kept,
            min_tokens: 17,
            ..Promises::default()
        },
    );
    run_decoding_conformance(
        &|r| {
            Box::new(PrefillDecoding {
                prefilling: Some(snapkv(0.5)),
                decoding: Some(decoding(snapkv(r))),
            })
        },
        false,
    );
}

#[test]
fn per_layer_conforms() {
    // The synthetic layer is layer 0 of 4: its ratio is the first entry.
    run_conformance(
        &|r| {
            Box::new(PerLayer {
                inner: snapkv(0.0),
                compression_ratios: vec![r, 0.1, 0.2, 0.3],
            })
        },
        &Promises {
            always_kept: window_kept,
            min_tokens: 17,
            ..Promises::default()
        },
    );
}

#[test]
fn composed_chains_selections() {
    let layer = layer(128);
    let composed = Composed {
        presses: vec![snapkv(0.5), snapkv(0.5)],
    };
    assert!((composed.compression_ratio() - 0.75).abs() < 1e-12);
    let both = composed.compress(&layer.input()).unwrap();
    let first = snapkv(0.5).compress(&layer.input()).unwrap();
    let keys = first.selection.gather(layer.input().keys).unwrap();
    let values = first.selection.gather(layer.input().values).unwrap();
    let second = snapkv(0.5)
        .compress(&layer.input().with_keys_values(&keys, &values))
        .unwrap();
    assert_eq!(
        both.selection,
        first.selection.then(&second.selection).unwrap()
    );
    assert_eq!(
        both.selection.uniform_len(),
        Some(n_kept(n_kept(128, 0.5), 0.5))
    );
}

#[test]
fn chunks_keep_their_share() {
    let layer = layer(200);
    let press = Chunked {
        inner: snapkv(0.5),
        chunk_length: 100,
        queries_at_own_positions: false,
    };
    let compression = press.compress(&layer.input()).unwrap();
    for head in compression.selection.heads() {
        assert_eq!(head.iter().filter(|&&i| i < 100).count(), 50);
        assert_eq!(head.iter().filter(|&&i| i >= 100).count(), 50);
    }
}

#[test]
fn rerotated_keys_sit_at_their_rank() {
    let layer = layer(64);
    let input = layer.input();
    let press = KeyRerotation { inner: snapkv(0.5) };
    let compression = press.compress(&input).unwrap();
    let rerotated = compression.keys.expect("re-rotated keys");
    // Independent check with candle's RoPE: undo the rotation at the original position, apply
    // the one at the rank.
    let selection = &compression.selection;
    for kv_head in 0..2 {
        let positions: Vec<usize> = selection
            .head(0, kv_head)
            .iter()
            .map(|&p| p as usize)
            .collect();
        let kept = selection
            .gather(input.keys)
            .unwrap()
            .get(0)
            .unwrap()
            .get(kv_head)
            .unwrap();
        let kept = kept.unsqueeze(0).unwrap().unsqueeze(0).unwrap();
        let (cos, sin) = input.rotary.tables(&positions, DType::F32).unwrap();
        let unrotated = RotaryEmbedding::apply(&kept, &cos, &sin.neg().unwrap()).unwrap();
        let (cos, sin) = input
            .rotary
            .tables_for_range(0, positions.len(), DType::F32)
            .unwrap();
        let expected = RotaryEmbedding::apply(&unrotated, &cos, &sin).unwrap();
        let got = rerotated.get(0).unwrap().get(kv_head).unwrap();
        let diff = (expected.squeeze(0).unwrap().squeeze(0).unwrap() - got)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff < 1e-4,
            "head {kv_head}: re-rotated keys differ by {diff}"
        );
    }
    assert!(press.describe().rerotates_keys);
}

#[test]
fn per_layer_needs_one_ratio_per_layer() {
    let layer = layer(64);
    let press = PerLayer {
        inner: snapkv(0.0),
        compression_ratios: vec![0.5, 0.5],
    };
    let error = press.compress(&layer.input()).unwrap_err().to_string();
    assert!(
        error.contains("4 layers but compression_ratios has 2 entries"),
        "{error}"
    );
    let bad = PerLayer {
        inner: snapkv(0.0),
        compression_ratios: vec![0.5, 1.0],
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("outside [0, 1)"));
}

#[test]
fn wrappers_load_from_configs() {
    let press = press_from_json(
        r#"{"press": "composed", "presses": [
            {"press": "key_rerotation", "inner": {"press": "snapkv", "compression_ratio": 0.5}},
            {"press": "chunk", "chunk_length": 256, "inner": {"press": "snapkv", "compression_ratio": 0.5}}
        ]}"#,
    )
    .unwrap();
    assert!((press.compression_ratio() - 0.75).abs() < 1e-12);
    assert!(press.describe().rerotates_keys);
    let error = press_from_json(r#"{"press": "chunk", "inner": {"press": "snapkv"}, "chunk": 3}"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown field `chunk`"), "{error}");
}

#[test]
fn wrapper_kept_sets_on_a_fixed_input() {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 1).unwrap();
    // Queries at their own positions (as before kvpress's quirk was matched; ties at the cut
    // are now resolved as PyTorch's topk resolves them).
    let chunked = Chunked {
        inner: snapkv(0.5),
        chunk_length: 24,
        queries_at_own_positions: true,
    };
    insta::assert_json_snapshot!(chunked.compress(&layer.input()).unwrap().selection.heads());
}

/// kvpress's chunk quirk, checked the way kvpress computes it: SnapKV's window queries of the
/// first chunk are recomputed from its hidden states and rotated at the positions of the
/// context's last tokens, while its keys stay where they are.
#[test]
fn chunk_windows_are_rotated_at_the_contexts_last_positions() {
    use kvpress_core::press::{InputChunk, PressInput, Scorer};
    use presses_ops::TorchTopK;
    let (n_tokens, chunk) = (96, 48);
    let layer = layer(n_tokens);
    let input = layer.input();
    let (b, heads, d) = (1, input.shape.n_heads, input.shape.head_dim);
    let weight = input.projections.query_weight().unwrap();
    let part = InputChunk::new(&input, 0, chunk).unwrap();
    let part_input = part.input(&input);
    let pre_rope = part_input
        .hidden_states
        .broadcast_matmul(&weight.t().unwrap())
        .unwrap()
        .reshape((b, chunk, heads, d))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap();
    let (cos, sin) = input
        .rotary
        .tables_for_range(n_tokens - chunk, chunk, DType::F32)
        .unwrap();
    let queries = RotaryEmbedding::apply(&pre_rope, &cos, &sin).unwrap();
    let quirk_input = PressInput {
        queries: &queries,
        ..part_input
    };
    let inner = SnapKv {
        compression_ratio: 0.5,
        window_size: 16,
        kernel_size: 5,
    };
    let scores = inner.score(&quirk_input, 0.5).unwrap();
    let expected = TorchTopK::keep_top(&scores, chunk / 2).unwrap();
    let kvpress_like = Chunked {
        inner: snapkv(0.5),
        chunk_length: chunk,
        queries_at_own_positions: false,
    }
    .compress(&input)
    .unwrap();
    let own = Chunked {
        inner: snapkv(0.5),
        chunk_length: chunk,
        queries_at_own_positions: true,
    }
    .compress(&input)
    .unwrap();
    for kv_head in 0..2 {
        let first_chunk: Vec<u32> = kvpress_like
            .selection
            .head(0, kv_head)
            .iter()
            .copied()
            .filter(|&i| (i as usize) < chunk)
            .collect();
        assert_eq!(first_chunk, expected.head(0, kv_head), "head {kv_head}");
        // The last chunk ends where the context ends: both agree there.
        let last = |s: &kvpress_core::press::Selection| -> Vec<u32> {
            s.head(0, kv_head)
                .iter()
                .copied()
                .filter(|&i| (i as usize) >= chunk)
                .collect()
        };
        assert_eq!(last(&kvpress_like.selection), last(&own.selection));
    }
    // Scores: the chunk's scores side by side (the first chunk's as computed above).
    let reported = kvpress_like.scores.unwrap().narrow(2, 0, chunk).unwrap();
    let diff = (reported - scores)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-6, "first chunk's scores differ by {diff}");
}

#[test]
fn chunk_refuses_inner_presses_that_do_not_score() {
    let error = press_from_json(
        r#"{"press": "chunk", "inner": {"press": "key_rerotation", "inner": {"press": "snapkv", "compression_ratio": 0.5}}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("re-rotates keys"), "{error}");
}

#[test]
fn chunk_kept_sets_on_a_fixed_input() {
    // kvpress's behaviour (the default): the first chunk's window at the context's end.
    let layer = SyntheticLayer::random(SyntheticShape::small(96), 1).unwrap();
    let chunked = Chunked {
        inner: snapkv(0.5),
        chunk_length: 48,
        queries_at_own_positions: false,
    };
    insta::assert_json_snapshot!(chunked.compress(&layer.input()).unwrap().selection.heads());
}
