//! Text generation: greedy decoding, EOS handling, max_new_tokens, seeded sampling.

mod common;

use candle_core::quantized::GgmlDType;
use common::*;
use kvpress_models::{
    Error, GenerationConfig, GenerationOutput, LoadedModel, Model, Sampling, StopReason,
};

fn loaded(arch: Arch) -> LoadedModel {
    Spec::new(arch)
        .build()
        .gguf(GgmlDType::F32)
        .load(F32)
        .unwrap()
}

fn greedy(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens,
        sampling: Sampling::Greedy,
    }
}

fn gen(model: &Model, prompt: &[u32], eos: &[u32], config: &GenerationConfig) -> GenerationOutput {
    let mut cache = model.new_cache();
    kvpress_models::generate(
        model,
        &mut cache,
        prompt,
        eos,
        config,
        None,
        &mut |_| Ok(()),
    )
    .unwrap()
}

/// Greedy decoding written out with `Model::forward` and `argmax`.
fn manual_greedy(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.new_cache();
    let mut logits = forward_vec(model, &mut cache, prompt);
    let mut out = Vec::new();
    for _ in 0..n {
        let next = kvpress_models::argmax(&logits);
        out.push(next);
        logits = forward_vec(model, &mut cache, &[next]);
    }
    out
}

#[test]
fn greedy_generation_is_deterministic_and_equals_manual_argmax() {
    for arch in Arch::ALL {
        let model = loaded(arch).model;
        let a = gen(&model, &PROMPT, &[], &greedy(8));
        let b = gen(&model, &PROMPT, &[], &greedy(8));
        assert_eq!(a.tokens, b.tokens, "{arch:?}");
        assert_eq!(a.tokens.len(), 8, "no EOS ids: runs to max_new_tokens");
        assert_ne!(a.stop_reason, StopReason::Eos);
        assert_eq!(a.n_prompt_tokens, PROMPT.len());
        assert!(a.tokens.iter().all(|&t| (t as usize) < TOKENS.len()));
        assert_eq!(a.tokens, manual_greedy(&model, &PROMPT, 8), "{arch:?}");
    }
}

#[test]
fn generation_stops_at_eos_and_includes_it() {
    let loaded = loaded(Arch::Qwen3);
    let model = &loaded.model;
    let free = gen(model, &PROMPT, &[], &greedy(8));
    // Use the third greedy token as EOS: generation must stop at its first occurrence.
    let eos = free.tokens[2];
    let first = free.tokens.iter().position(|&t| t == eos).unwrap();
    let stopped = gen(model, &PROMPT, &[eos], &greedy(8));
    assert_eq!(stopped.stop_reason, StopReason::Eos);
    assert_eq!(stopped.tokens, free.tokens[..=first].to_vec());
    assert_eq!(
        *stopped.tokens.last().unwrap(),
        eos,
        "the EOS token is part of the output"
    );

    // EOS as the very first token.
    let first_token = free.tokens[0];
    let out = gen(model, &PROMPT, &[99, first_token], &greedy(8));
    assert_eq!(out.tokens, vec![first_token]);
    assert_eq!(out.stop_reason, StopReason::Eos);

    // Through the tokenizer's EOS ids.
    let mut tokenizer = loaded.tokenizer.clone();
    tokenizer.set_eos_ids(vec![eos]);
    assert_eq!(tokenizer.eos_ids(), &[eos]);
    let out = gen(model, &PROMPT, tokenizer.eos_ids(), &greedy(8));
    assert_eq!(out.tokens, stopped.tokens);
}

#[test]
fn max_new_tokens_is_respected() {
    let model = loaded(Arch::Llama).model;
    let full = gen(&model, &PROMPT, &[], &greedy(6));
    for n in 0..=6 {
        let out = gen(&model, &PROMPT, &[], &greedy(n));
        assert_eq!(
            out.tokens,
            full.tokens[..n].to_vec(),
            "max_new_tokens = {n}"
        );
        assert_eq!(out.stop_reason, StopReason::MaxNewTokens);
    }
    // The cache holds the prompt and every generated token except the last (not fed back).
    let mut cache = model.new_cache();
    let out = kvpress_models::generate(
        &model,
        &mut cache,
        &PROMPT,
        &[],
        &greedy(5),
        None,
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!(out.tokens.len(), 5);
    assert_eq!(cache.seen_tokens(), PROMPT.len() + 4);
    // max_new_tokens = 0 still runs the prefill.
    let mut cache = model.new_cache();
    let out = kvpress_models::generate(
        &model,
        &mut cache,
        &PROMPT,
        &[],
        &greedy(0),
        None,
        &mut |_| Ok(()),
    )
    .unwrap();
    assert!(out.tokens.is_empty());
    assert_eq!(cache.seen_tokens(), PROMPT.len());
}

#[test]
fn on_token_sees_every_token_and_can_stop_generation() {
    let model = loaded(Arch::Qwen2).model;
    let mut seen = Vec::new();
    let mut cache = model.new_cache();
    let out = kvpress_models::generate(
        &model,
        &mut cache,
        &PROMPT,
        &[],
        &greedy(5),
        None,
        &mut |t| {
            seen.push(t);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(seen, out.tokens);

    let mut count = 0;
    let mut cache = model.new_cache();
    let err = kvpress_models::generate(
        &model,
        &mut cache,
        &PROMPT,
        &[],
        &greedy(5),
        None,
        &mut |_| {
            count += 1;
            if count == 2 {
                Err(Error::InvalidInput("stop requested".into()))
            } else {
                Ok(())
            }
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("stop requested"), "{err}");
    assert_eq!(count, 2);
}

#[test]
fn seeded_top_p_sampling_is_reproducible() {
    let model = loaded(Arch::Qwen3).model;
    let sampled = |seed: u64| {
        let config = GenerationConfig {
            max_new_tokens: 12,
            sampling: Sampling::TopP {
                temperature: 5.0,
                top_p: 1.0,
                seed,
            },
        };
        gen(&model, &PROMPT, &[], &config).tokens
    };
    let a = sampled(1234);
    assert_eq!(a.len(), 12);
    assert_eq!(a, sampled(1234), "same seed, same tokens");
    // A hot temperature over 40 tokens: other seeds give other sequences.
    assert!(
        [1, 2, 3].iter().any(|&s| sampled(s) != a),
        "different seeds all gave the same 12 tokens"
    );
    assert!(a.iter().all(|&t| (t as usize) < TOKENS.len()));
}

#[test]
fn tiny_top_p_is_greedy() {
    // top_p close to 0 keeps only the most likely token, whatever the seed and temperature.
    let model = loaded(Arch::Llama).model;
    let want = gen(&model, &PROMPT, &[], &greedy(6)).tokens;
    for seed in [0, 1, 99] {
        let config = GenerationConfig {
            max_new_tokens: 6,
            sampling: Sampling::TopP {
                temperature: 1.5,
                top_p: 1e-9,
                seed,
            },
        };
        assert_eq!(
            gen(&model, &PROMPT, &[], &config).tokens,
            want,
            "seed {seed}"
        );
    }
}

#[test]
fn generation_continues_a_cache_at_its_position() {
    // Prefilling a context, then generating after a question, equals generating after the
    // concatenated prompt.
    let model = loaded(Arch::Qwen2).model;
    let whole = gen(&model, &PROMPT, &[], &greedy(5));
    let mut cache = model.new_cache();
    forward_vec(&model, &mut cache, &PROMPT[..6]);
    let continued = kvpress_models::generate(
        &model,
        &mut cache,
        &PROMPT[6..],
        &[],
        &greedy(5),
        None,
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!(continued.tokens, whole.tokens);
    assert_eq!(continued.n_prompt_tokens, PROMPT.len() - 6);
}

#[test]
fn generation_from_a_chat_prompt_round_trips_through_the_tokenizer() {
    let loaded = loaded(Arch::Qwen3);
    let prompt = loaded
        .chat_template
        .as_ref()
        .unwrap()
        .render(&[kvpress_models::ChatMessage::user("hello world")], true)
        .unwrap();
    let ids = loaded.tokenizer.encode(&prompt, false).unwrap();
    let out = gen(&loaded.model, &ids, loaded.tokenizer.eos_ids(), &greedy(6));
    assert!(!out.tokens.is_empty() && out.tokens.len() <= 6);
    assert_eq!(
        out.stop_reason == StopReason::Eos,
        out.tokens.last() == Some(&EOS_ID)
    );
    // Streaming the generated tokens gives the same text as decoding them at once.
    let text = loaded.tokenizer.decode(&out.tokens, true).unwrap();
    let mut stream = kvpress_models::StreamDecoder::default();
    let mut streamed = String::new();
    for &t in &out.tokens {
        if let Some(piece) = stream.push(&loaded.tokenizer, t).unwrap() {
            streamed.push_str(&piece);
        }
    }
    assert_eq!(streamed, text);
    assert!(out.prefill_tokens_per_second() > 0.0);
    assert!(out.decode_ms_per_token() >= 0.0);
}

#[test]
fn a_stop_condition_ends_generation_where_it_holds() {
    let model = loaded(Arch::ALL[0]).model;
    let full = gen(&model, &PROMPT, &[], &greedy(8));
    let mut cache = model.new_cache();
    let mut seen = Vec::new();
    let stopped = kvpress_models::generate_until(
        &model,
        &mut cache,
        &PROMPT,
        &[],
        &greedy(8),
        None,
        &mut |_| Ok(()),
        &mut |tokens| {
            seen.push(tokens.len());
            tokens.len() == 3
        },
    )
    .unwrap();
    assert_eq!(stopped.tokens, full.tokens[..3]);
    assert_eq!(stopped.stop_reason, StopReason::Stopped);
    assert_eq!(seen, [1, 2, 3], "asked after every token");
    assert_eq!(
        cache.seen_tokens(),
        PROMPT.len() + 2,
        "the last token is not fed back"
    );
}
