//! Several contexts of different lengths, each compressed with its own (per-head) budgets,
//! answered in one batch: the answers equal one-at-a-time answers.

use kvpress::candle::Device;
use kvpress::core::press::press_from_toml;
use kvpress::hooks::batch::{answer_batch, answer_batch_until};
use kvpress::hooks::{ContextSession, PromptSplit};
use kvpress::models::{load_model, GenerationConfig, Sampling};

#[test]
fn a_batch_of_four_contexts_answers_like_one_at_a_time() {
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    let model = load_model(&path, None, &Device::Cpu).expect("the default model loads");
    let haystack = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/needle-haystack.txt"),
    )
    .unwrap();
    let question = "What is the special magic number for ocean mentioned in the provided text?";
    let cases = [
        (1.0, "press = \"adakv\"\n[inner]\npress = \"snapkv\"\ncompression_ratio = 0.5\n"),
        (0.8, "press = \"adakv\"\n[inner]\npress = \"expected_attention\"\ncompression_ratio = 0.75\n"),
        (0.6, "press = \"snapkv\"\ncompression_ratio = 0.5\n"),
        (0.45, "press = \"no_press\"\n"),
    ];
    let mut sessions = Vec::new();
    let mut questions = Vec::new();
    let mut lengths = Vec::new();
    for (fraction, config) in cases {
        let end = haystack.floor_char_boundary((haystack.len() as f64 * fraction) as usize);
        let split = PromptSplit::new(&model, &haystack[..end], question).unwrap();
        let press = press_from_toml(config).unwrap();
        let (session, _) =
            ContextSession::compress(&model.model, &split.context_ids, press.as_ref(), &[])
                .unwrap();
        lengths.push(split.context_ids.len());
        sessions.push(session);
        questions.push(split.question_ids);
    }
    assert!(
        lengths.windows(2).all(|w| w[0] > w[1]),
        "different lengths: {lengths:?}"
    );

    let batched = answer_batch(&model, &mut sessions, &questions, 24).unwrap();
    let config = GenerationConfig {
        max_new_tokens: 24,
        sampling: Sampling::Greedy,
    };
    for (i, (session, question)) in sessions.iter_mut().zip(&questions).enumerate() {
        let alone = session
            .answer(
                &model.model,
                question,
                model.tokenizer.eos_ids(),
                &config,
                &mut |_| Ok(()),
            )
            .unwrap();
        eprintln!(
            "{i}: {:?}",
            model.tokenizer.decode(&alone.tokens, true).unwrap()
        );
        assert_eq!(batched[i], alone.tokens, "context {i}");
    }
    // The sessions were rewound: a second batch gives the same answers.
    assert_eq!(
        answer_batch(&model, &mut sessions, &questions, 24).unwrap(),
        batched
    );
}

#[test]
fn many_sessions_with_a_stop_rule_answer_like_alone() {
    // More sessions than the one-sequence kernels take in a prefill (16 rows), and a stop rule
    // that ends some answers early: exactly the one-at-a-time answers. With kept f32 weights
    // (the evaluation's setting) the products run through the sgemm, which differs in rounding
    // only: the same answers, but for a rare near-tie.
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    let mut model = load_model(&path, None, &Device::Cpu).expect("the default model loads");
    let haystack = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/needle-haystack.txt"),
    )
    .unwrap();
    let end = haystack.floor_char_boundary(haystack.len() / 3);
    let split = PromptSplit::new(
        &model,
        &haystack[..end],
        "What is the special magic number for ocean mentioned in the provided text?",
    )
    .unwrap();
    let mut sessions = Vec::new();
    for press in [
        "knorm",
        "streaming_llm",
        "snapkv",
        "expected_attention",
        "tova",
        "random",
    ] {
        for ratio in [0.2, 0.5, 0.8] {
            let config = format!("press = \"{press}\"\ncompression_ratio = {ratio}\n");
            let press = press_from_toml(&config).unwrap();
            let (session, _) =
                ContextSession::compress(&model.model, &split.context_ids, press.as_ref(), &[])
                    .unwrap();
            sessions.push(session);
        }
    }
    assert!(sessions.len() > 16);
    let questions = vec![split.question_ids.clone(); sessions.len()];
    // Odd sessions stop once their answer holds a digit.
    let stop_rule = |tokenizer: &kvpress::models::TextTokenizer, i: usize, tokens: &[u32]| {
        i % 2 == 1
            && tokenizer
                .decode(tokens, true)
                .is_ok_and(|t| t.chars().any(|c| c.is_ascii_digit()))
    };
    let config = GenerationConfig {
        max_new_tokens: 20,
        sampling: Sampling::Greedy,
    };
    let mut alone = Vec::new();
    for (i, session) in sessions.iter_mut().enumerate() {
        alone.push(
            session
                .answer_until(
                    &model.model,
                    &split.question_ids,
                    model.tokenizer.eos_ids(),
                    &config,
                    &mut |_| Ok(()),
                    &mut |tokens| stop_rule(&model.tokenizer, i, tokens),
                )
                .unwrap(),
        );
    }
    let stopped_early = alone
        .iter()
        .filter(|a| a.stop_reason == kvpress::models::StopReason::Stopped)
        .count();
    assert!(
        stopped_early > 0,
        "the stop rule ended no answer: the test checks nothing"
    );

    let mut refs: Vec<&mut ContextSession> = sessions.iter_mut().collect();
    let tokenizer = model.tokenizer.clone();
    let batched = answer_batch_until(&model, &mut refs, &questions, 20, &mut |i, tokens| {
        stop_rule(&tokenizer, i, tokens)
    })
    .unwrap();
    for (i, (answer, alone)) in batched.answers.iter().zip(&alone).enumerate() {
        assert_eq!(answer.tokens, alone.tokens, "session {i}");
        assert_eq!(answer.stop_reason, alone.stop_reason, "session {i}");
    }

    model.model.keep_dequantized_weights(usize::MAX).unwrap();
    let mut refs: Vec<&mut ContextSession> = sessions.iter_mut().collect();
    let with_sgemm = answer_batch_until(&model, &mut refs, &questions, 20, &mut |i, tokens| {
        stop_rule(&tokenizer, i, tokens)
    })
    .unwrap();
    let same = with_sgemm
        .answers
        .iter()
        .zip(&alone)
        .filter(|(a, b)| a.tokens == b.tokens)
        .count();
    assert!(
        same + 2 >= alone.len(),
        "only {same} of {} answers equal the one-at-a-time ones",
        alone.len()
    );
}
