//! Decoding several independent sequences in one step gives each sequence, bit for bit, the
//! logits of decoding it alone — also with more sequences than the one-sequence kernels take
//! (where a prefill would switch to the sgemm). With kept f32 copies of quantized weights the
//! step multiplies through the sgemm: the same logits up to rounding.

mod common;

use candle_core::quantized::GgmlDType;
use common::*;
use kvpress_core::ModelCache;
use kvpress_models::{Model, WeightMode};

/// Sequences decoded together: more than the 16 rows from which a prefill uses the sgemm.
const SEQUENCES: usize = 19;

/// Caches of different lengths (prompts of 2 to 10 tokens, some with a question appended).
fn prefilled_caches(model: &Model) -> Vec<ModelCache> {
    (0..SEQUENCES)
        .map(|i| {
            let mut cache = model.new_cache();
            let len = 2 + i % (PROMPT.len() - 1);
            forward_vec(model, &mut cache, &PROMPT[..len]);
            if i % 3 == 0 {
                forward_vec(model, &mut cache, &[7, 8, 9]);
            }
            cache
        })
        .collect()
}

/// How closely decoding together must match decoding alone.
#[derive(Clone, Copy, PartialEq)]
enum Match {
    Exact,
    UpToRounding,
}

/// One new token per sequence.
fn one_each(tokens: &[u32]) -> Vec<&[u32]> {
    tokens.iter().map(std::slice::from_ref).collect()
}

fn check_sequences_match_alone(model: &Model, label: &str, expected: Match) {
    let mut together = prefilled_caches(model);
    let mut alone = prefilled_caches(model);
    let mut tokens: Vec<u32> = (0..SEQUENCES as u32).map(|i| 3 + i % 30).collect();
    for step in 0..3 {
        let mut refs: Vec<&mut ModelCache> = together.iter_mut().collect();
        let logits: Vec<Vec<f32>> = model
            .forward_sequences(&one_each(&tokens), &mut refs)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (i, cache) in alone.iter_mut().enumerate() {
            let want = forward_vec(model, cache, &[tokens[i]]);
            match expected {
                Match::Exact => assert_eq!(logits[i], want, "{label}: step {step}, sequence {i}"),
                Match::UpToRounding => {
                    let diff = max_abs_diff(&logits[i], &want);
                    assert!(
                        diff < 1e-4 * max_abs(&want).max(1.0),
                        "{label}: step {step}, sequence {i}: {diff}"
                    );
                }
            }
            assert_eq!(together[i].seen_tokens(), cache.seen_tokens());
            assert_eq!(together[i].lengths(), cache.lengths());
        }
        tokens = logits
            .iter()
            .map(|row| kvpress_models::argmax(row))
            .collect();
    }
}

#[test]
fn sequences_decoded_together_equal_each_alone() {
    for arch in Arch::ALL {
        let tiny = Spec::new(arch).tied(arch == Arch::Llama).build();
        for (dtype, mode) in [
            (GgmlDType::Q4_1, WeightMode::Quantized),
            (GgmlDType::Q8_0, WeightMode::Quantized),
            (GgmlDType::F32, F32),
        ] {
            let mut loaded = tiny.gguf(dtype).load(mode).unwrap();
            let label = format!("{arch:?} {dtype:?}");
            check_sequences_match_alone(&loaded.model, &label, Match::Exact);
            if mode == WeightMode::Quantized {
                // With kept f32 copies the sgemm multiplies the dequantized weights.
                loaded.model.keep_dequantized_weights(usize::MAX).unwrap();
                check_sequences_match_alone(
                    &loaded.model,
                    &format!("{label} kept"),
                    Match::UpToRounding,
                );
                // And does so the same way every time.
                let mut a = prefilled_caches(&loaded.model);
                let mut b = prefilled_caches(&loaded.model);
                let tokens: Vec<u32> = (0..SEQUENCES as u32).collect();
                let mut refs_a: Vec<&mut ModelCache> = a.iter_mut().collect();
                let mut refs_b: Vec<&mut ModelCache> = b.iter_mut().collect();
                let first = loaded
                    .model
                    .forward_sequences(&one_each(&tokens), &mut refs_a)
                    .unwrap();
                let again = loaded
                    .model
                    .forward_sequences(&one_each(&tokens), &mut refs_b)
                    .unwrap();
                assert_eq!(flat(&first), flat(&again), "{label} kept: deterministic");
            }
        }
    }
}

#[test]
fn bad_sequence_inputs_are_errors_that_leave_caches_alone() {
    let tiny = Spec::new(Arch::Qwen2).build();
    let loaded = tiny.gguf(GgmlDType::F32).load(F32).unwrap();
    let model = &loaded.model;
    let mut caches = prefilled_caches(model);
    let before: Vec<_> = caches
        .iter()
        .map(|c| (c.lengths(), c.seen_tokens()))
        .collect();
    let mut refs: Vec<&mut ModelCache> = caches.iter_mut().take(2).collect();
    let err = model.forward_sequences(&[&[1]], &mut refs).unwrap_err();
    assert!(err.to_string().contains("1 lists for 2 caches"), "{err}");
    let err = model
        .forward_sequences(&[&[1], &[4000]], &mut refs)
        .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let err = model
        .forward_sequences(&[&[1, 2], &[3]], &mut refs)
        .unwrap_err();
    assert!(err.to_string().contains("same, non-zero number"), "{err}");
    let err = model.forward_sequences(&[], &mut []).unwrap_err();
    assert!(
        err.to_string().contains("one token list per sequence"),
        "{err}"
    );
    let after: Vec<_> = caches
        .iter()
        .map(|c| (c.lengths(), c.seen_tokens()))
        .collect();
    assert_eq!(before, after);
}

#[test]
fn a_question_put_to_many_caches_matches_each_alone() {
    // Several new tokens per sequence (the same question to many contexts): each row's logits
    // are those of that sequence alone, up to rounding (the products run over all rows).
    let tiny = Spec::new(Arch::Qwen3).build();
    for kept in [false, true] {
        let mut loaded = tiny
            .gguf(GgmlDType::Q4_1)
            .load(WeightMode::Quantized)
            .unwrap();
        if kept {
            loaded.model.keep_dequantized_weights(usize::MAX).unwrap();
        }
        let model = &loaded.model;
        let mut together = prefilled_caches(model);
        let mut alone = prefilled_caches(model);
        let question = [11u32, 12, 13, 14];
        let mut refs: Vec<&mut ModelCache> = together.iter_mut().collect();
        let tokens = vec![&question[..]; SEQUENCES];
        let logits: Vec<Vec<f32>> = model
            .forward_sequences(&tokens, &mut refs)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (i, cache) in alone.iter_mut().enumerate() {
            let want = forward_vec(model, cache, &question);
            let diff = max_abs_diff(&logits[i], &want);
            assert!(
                diff < 1e-4 * max_abs(&want).max(1.0),
                "kept {kept}, sequence {i}: {diff}"
            );
            assert_eq!(together[i].seen_tokens(), cache.seen_tokens());
            assert_eq!(together[i].lengths(), cache.lengths());
        }
    }
}
