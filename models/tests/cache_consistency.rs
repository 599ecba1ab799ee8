//! The KV cache makes one prefill forward and token-by-token forwards compute the same thing.

mod common;

use candle_core::quantized::GgmlDType;
use common::*;
use kvpress_models::LogitsFor;

const TOL: f32 = 1e-4;

#[test]
fn prefill_equals_token_by_token_for_every_architecture() {
    for arch in Arch::ALL {
        for tied in [false, true] {
            let tiny = Spec::new(arch).tied(tied).build();
            let loaded = tiny.gguf(GgmlDType::F32).load(F32).unwrap();
            let model = &loaded.model;
            let one_shot = last_logits(model, &PROMPT);

            let mut cache = model.new_cache();
            let mut logits = Vec::new();
            for (i, &t) in PROMPT.iter().enumerate() {
                logits = forward_vec(model, &mut cache, &[t]);
                assert_eq!(cache.seen_tokens(), i + 1);
                assert_eq!(cache.lengths(), vec![i + 1; tiny.spec.n_layers]);
            }
            let diff = max_abs_diff(&one_shot, &logits);
            assert!(
                diff < TOL,
                "{arch:?} tied={tied}: prefill vs incremental differ by {diff}"
            );
        }
    }
}

#[test]
fn every_prefill_position_matches_the_incremental_run() {
    // AllTokens logits of one prefill, row i, equal the logits after feeding tokens 0..=i one by
    // one: the causal mask and the RoPE positions agree at every position, not only the last.
    let tiny = Spec::new(Arch::Qwen3).build();
    let loaded = tiny.gguf(GgmlDType::F32).load(F32).unwrap();
    let model = &loaded.model;
    let mut cache = model.new_cache();
    let all = model
        .forward_logits(&ids(&PROMPT), &mut cache, None, LogitsFor::AllTokens)
        .unwrap();
    let mut cache = model.new_cache();
    for (i, &t) in PROMPT.iter().enumerate() {
        let step = forward_vec(model, &mut cache, &[t]);
        let row = flat(&all.narrow(1, i, 1).unwrap());
        let diff = max_abs_diff(&row, &step);
        assert!(diff < TOL, "position {i}: {diff}");
    }
}

#[test]
fn chunked_prefill_equals_one_prefill() {
    // Feeding the prompt in chunks of 4, 3, 3 tokens (a context, then a question) continues at
    // the right positions.
    for arch in Arch::ALL {
        let tiny = Spec::new(arch).build();
        let loaded = tiny.gguf(GgmlDType::F32).load(F32).unwrap();
        let model = &loaded.model;
        let one_shot = last_logits(model, &PROMPT);
        let mut cache = model.new_cache();
        forward_vec(model, &mut cache, &PROMPT[..4]);
        forward_vec(model, &mut cache, &PROMPT[4..7]);
        let chunked = forward_vec(model, &mut cache, &PROMPT[7..]);
        assert_eq!(cache.seen_tokens(), PROMPT.len());
        let diff = max_abs_diff(&one_shot, &chunked);
        assert!(diff < TOL, "{arch:?}: {diff}");
    }
}

#[test]
fn batched_forward_equals_separate_forwards() {
    // A batch of two different prompts gives each row the logits of its own prompt.
    let tiny = Spec::new(Arch::Qwen2).build();
    let loaded = tiny.gguf(GgmlDType::F32).load(F32).unwrap();
    let model = &loaded.model;
    let a = PROMPT;
    let b: [u32; 10] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    let batch = candle_core::Tensor::new(&[a, b], &candle_core::Device::Cpu).unwrap();
    let mut cache = model.new_cache();
    let logits = model.forward(&batch, &mut cache, None).unwrap();
    assert_eq!(logits.dims(), &[2, TOKENS.len()]);
    let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    assert!(max_abs_diff(&rows[0], &last_logits(model, &a)) < TOL);
    assert!(max_abs_diff(&rows[1], &last_logits(model, &b)) < TOL);
}

#[test]
fn a_cleared_cache_starts_over() {
    let tiny = Spec::new(Arch::Llama).build();
    let loaded = tiny.gguf(GgmlDType::F32).load(F32).unwrap();
    let model = &loaded.model;
    let mut cache = model.new_cache();
    let first = forward_vec(model, &mut cache, &PROMPT);
    forward_vec(model, &mut cache, &[5]);
    cache.clear();
    assert_eq!(cache.seen_tokens(), 0);
    assert_eq!(cache.lengths(), vec![0, 0]);
    let again = forward_vec(model, &mut cache, &PROMPT);
    assert_eq!(first, again);
}

#[test]
fn forwards_are_deterministic() {
    let tiny = Spec::new(Arch::Qwen3).build();
    let loaded = tiny.gguf(GgmlDType::F32).load(F32).unwrap();
    assert_eq!(
        last_logits(&loaded.model, &PROMPT),
        last_logits(&loaded.model, &PROMPT)
    );
    // The same seed builds the same weights; another seed other weights.
    let again = Spec::new(Arch::Qwen3)
        .build()
        .gguf(GgmlDType::F32)
        .load(F32)
        .unwrap();
    assert_eq!(
        last_logits(&loaded.model, &PROMPT),
        last_logits(&again.model, &PROMPT)
    );
    let other = Spec::new(Arch::Qwen3)
        .seed(7)
        .build()
        .gguf(GgmlDType::F32)
        .load(F32)
        .unwrap();
    assert_ne!(
        last_logits(&loaded.model, &PROMPT),
        last_logits(&other.model, &PROMPT)
    );
}
