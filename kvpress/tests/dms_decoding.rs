//! DMS while decoding (`decoding = true`): every generated token is scored when it is fed and,
//! once it leaves the sliding window, evicted from each head that scored it below the
//! threshold; the context's own last tokens carry their prefill scores into every answer, and
//! into a saved context. Parity with kvpress 0.5.5 on the reference prompt.

#[path = "common/compare.rs"]
mod compare;
#[path = "common/reference.rs"]
mod reference;

use kvpress::candle::{DType, Device, Tensor, D};
use kvpress::core::press::{press_from_toml, press_from_value, Press};
use kvpress::core::LayerSnapshot;
use kvpress::hooks::{AnswerOptions, ContextSession, Pipeline, PressHook};
use kvpress::models::{
    generate, generate_until, load_model, ChatMessage, GenerationConfig, LoadedModel, Sampling,
    WeightMode,
};

const THRESHOLD: f64 = -18.75;
const WINDOW: usize = 64;

fn model() -> LoadedModel {
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    load_model(&path, None, &Device::Cpu).expect("the default model loads")
}

fn dms(decoding: bool) -> Box<dyn Press> {
    press_from_toml(&format!(
        "press = \"dms\"\nthreshold = {THRESHOLD}\nsliding_window_size = {WINDOW}\n\
         decoding = {decoding}\n[inner]\npress = \"knorm\"\n"
    ))
    .unwrap()
}

/// Generates `n` tokens after a short prompt with `press` running in every forward; returns
/// the cache's snapshots and how many tokens were fed.
fn generate_with(model: &LoadedModel, press: &dyn Press, n: usize) -> (Vec<LayerSnapshot>, usize) {
    let template = model.chat_template.as_ref().unwrap();
    let text = template
        .render(
            &[ChatMessage::user("Tell me a long story about the sea.")],
            true,
        )
        .unwrap();
    let ids = model.tokenizer.encode(&text, false).unwrap();
    let mut cache = kvpress::hooks::new_cache_for(&model.model, press).unwrap();
    let mut hook = PressHook::new(press, &[]).unwrap();
    let config = GenerationConfig {
        max_new_tokens: n,
        sampling: Sampling::Greedy,
    };
    generate(
        &model.model,
        &mut cache,
        &ids,
        &[],
        &config,
        Some(&mut hook),
        &mut |_| Ok(()),
    )
    .unwrap();
    let snapshots = kvpress::hooks::snapshot::snapshot_layers(&cache).unwrap();
    (snapshots, ids.len() + n - 1)
}

/// Per head of a per-head snapshot: the KnormPress score (`-‖k‖`) of every stored key.
fn head_scores(snapshot: &LayerSnapshot) -> Vec<Vec<f32>> {
    let LayerSnapshot::PerHead {
        keys, head_lengths, ..
    } = snapshot
    else {
        panic!("dms stores heads in the flattened per-head cache")
    };
    let norms: Vec<f32> = keys
        .to_dtype(DType::F32)
        .unwrap()
        .sqr()
        .unwrap()
        .sum(D::Minus1)
        .unwrap()
        .sqrt()
        .unwrap()
        .neg()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut from = 0;
    head_lengths
        .iter()
        .map(|&l| {
            from += l;
            norms[from - l..from].to_vec()
        })
        .collect()
}

#[test]
fn tokens_leaving_the_window_below_the_threshold_are_evicted_while_generating() {
    let model = model();
    let (with_decoding, fed) = generate_with(&model, dms(true).as_ref(), 200);
    let (prefill_only, _) = generate_with(&model, dms(false).as_ref(), 200);
    let mut evicted_while_decoding = 0;
    for (layer, (during, after_prefill)) in with_decoding.iter().zip(&prefill_only).enumerate() {
        let (during, after_prefill) = (head_scores(during), head_scores(after_prefill));
        for (head, (scores, kept_by_prefill)) in during.iter().zip(&after_prefill).enumerate() {
            let older = scores.len() - WINDOW;
            // Everything before the window scored at least the threshold.
            assert!(
                scores[..older].iter().all(|&s| s >= THRESHOLD as f32),
                "layer {layer} head {head}: a token below the threshold stayed"
            );
            assert!(scores.len() <= fed);
            // Generated tokens are evicted too (prefill-only DMS keeps all of them).
            evicted_while_decoding += kept_by_prefill.len().saturating_sub(scores.len());
        }
    }
    assert!(evicted_while_decoding > 0, "decoding evicted nothing");
}

#[test]
fn answers_restore_the_context_and_a_saved_context_evicts_as_the_unsaved_one() {
    let pipe = Pipeline::from_loaded(model());
    let context_text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/needle-haystack.txt"
    ))
    .unwrap();
    let press = dms(true);
    let context = pipe.compress(&context_text, press.as_ref()).unwrap();
    let question = "What is the special magic number for ocean mentioned in the provided text?";
    let options = || AnswerOptions {
        max_new_tokens: 40,
        ..Default::default()
    };
    let first = context.ask_with(question, options()).unwrap();
    let again = context.ask_with(question, options()).unwrap();
    assert_eq!(
        first.tokens, again.tokens,
        "each answer starts from the context"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dms.kvp");
    context.save(&file).unwrap();
    let loaded = pipe.load_context(&file).unwrap();
    assert_eq!(
        loaded.ask_with(question, options()).unwrap().tokens,
        first.tokens,
        "the saved window scores evict as the unsaved context does"
    );
    let (session, header) = kvpress::hooks::context_file::load(&file, pipe.model()).unwrap();
    assert!(header.tensors.contains_key("layer.0.window_scores"));
    let window = session.window_scores().layers().unwrap();
    assert_eq!(window.len(), pipe.model().model.config().n_layers);
    assert!(window.iter().all(|t: &Tensor| t.dims() == [1, 3, WINDOW]));
}

#[test]
fn an_inner_press_needing_attention_weights_is_refused_while_decoding() {
    let error = press_from_toml(
        "press = \"dms\"\nthreshold = 0.0\ndecoding = true\n[inner]\npress = \"observed_attention\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("needs attention weights"), "{error}");
}

/// Every layer's per-head cache lengths.
fn head_lengths(cache: &kvpress::core::ModelCache) -> Vec<Vec<usize>> {
    (0..cache.n_layers())
        .map(|l| {
            let layer = cache.layer(l).unwrap();
            layer.head_lengths().unwrap_or_else(|| vec![layer.len(); 3])
        })
        .collect()
}

/// kvpress 0.5.5's `DMSPress(KnormPress(), decoding=True)` as its pipeline runs it
/// (`reference/generators/dms_decoding.py`): the same tokens per head after the prefill and
/// after the question and a 24-token answer (kvpress's unmasked counts, our stored lengths),
/// the same first-answer logits and the same answer.
#[test]
fn evicting_while_decoding_matches_kvpress() {
    let want = reference::fixture("niah-noise-1k.dms-decoding");
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    let model = load_model(&path, Some(WeightMode::Dense(DType::F32)), &Device::Cpu).unwrap();
    let press = press_from_value(want["press"].clone()).unwrap();
    let ids = |field: &str| -> Vec<u32> { serde_json::from_value(want[field].clone()).unwrap() };
    let (context_ids, question_ids) = (ids("context_ids"), ids("question_ids"));
    let (mut session, _) =
        ContextSession::compress(&model.model, &context_ids, press.as_ref(), &[]).unwrap();
    let counts =
        |field: &str| -> Vec<Vec<usize>> { serde_json::from_value(want[field].clone()).unwrap() };
    assert_eq!(
        head_lengths(session.cache()),
        counts("unmasked_after_prefill"),
        "after the prefill"
    );
    let question = Tensor::new(question_ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let first: Vec<f32> = model
        .model
        .forward(&question, session.cache_mut(), None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    session.rewind().unwrap();
    let error = compare::max_abs_diff(&first, &compare::floats(&want["answer_first_logits"]));
    assert!(error <= 1e-3, "first-answer logits differ by {error:e}");
    let window = session.window_scores().clone();
    let mut cache = session.into_cache();
    let mut hook = PressHook::new(press.as_ref(), &[])
        .unwrap()
        .with_window_scores(window);
    let config = GenerationConfig {
        max_new_tokens: want["max_new_tokens"].as_u64().unwrap() as usize,
        sampling: Sampling::Greedy,
    };
    let answer = generate_until(
        &model.model,
        &mut cache,
        &question_ids,
        model.tokenizer.eos_ids(),
        &config,
        Some(&mut hook),
        &mut |_| Ok(()),
        &mut |_| false,
    )
    .unwrap();
    assert_eq!(answer.tokens, ids("answer_ids"), "the answer");
    assert_eq!(
        cache.seen_tokens(),
        want["cache_length_after_answer"].as_u64().unwrap() as usize
    );
    assert_eq!(
        head_lengths(&cache),
        counts("unmasked_after_answer"),
        "after the answer"
    );
    assert!(hook.decode_compressions() > 0);
}
