//! Parity with NVIDIA kvpress on the default model: the fixture
//! `reference/fixtures/niah-noise-1k.json.gz` holds what kvpress 0.5.5 + transformers compute
//! (float32) for the prompt `reference/prompts/niah-noise-1k.json`. Needs the default model
//! (`kvpress fetch-model`, which CI runs); `KVPRESS_REFERENCE_DIR` names another reference
//! directory than the repository's `reference/`.

#[path = "common/compare.rs"]
mod compare;
#[path = "common/reference.rs"]
mod reference;

use compare::{floats, max_abs_diff};

use kvpress::candle::{DType, Device};
use kvpress::hooks::trace::{trace, PromptFile, Trace};
use kvpress::models::{load_model, LoadedModel, WeightMode};
use serde_json::Value;

fn fixture() -> Value {
    reference::fixture("niah-noise-1k")
}

fn default_model(mode: WeightMode) -> LoadedModel {
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    load_model(&path, Some(mode), &Device::Cpu).expect("the default model loads")
}

fn trace_fixture_prompt(model: &LoadedModel, fixture: &Value) -> Trace {
    let prompt: PromptFile =
        serde_json::from_value(fixture["prompt"].clone()).expect("fixture prompt");
    trace(model, &prompt, &[]).expect("trace runs")
}

fn ids(value: &Value) -> Vec<u32> {
    serde_json::from_value(value.clone()).expect("a list of token ids")
}

#[test]
fn the_fixture_was_made_from_the_reference_prompt() {
    assert_eq!(
        fixture()["prompt"],
        reference::json("prompts/niah-noise-1k.json"),
        "the fixture's prompt is prompts/niah-noise-1k.json"
    );
}

#[test]
fn dequantized_f32_run_matches_kvpress() {
    let fixture = fixture();
    let model = default_model(WeightMode::Dense(DType::F32));
    let got = trace_fixture_prompt(&model, &fixture);

    assert_eq!(
        got.context_ids,
        ids(&fixture["context_ids"]),
        "context tokens"
    );
    assert_eq!(
        got.question_ids,
        ids(&fixture["question_ids"]),
        "question tokens"
    );
    assert_eq!(got.context_text, fixture["context_text"].as_str().unwrap());
    assert_eq!(
        got.question_text,
        fixture["question_text"].as_str().unwrap()
    );

    let want_logits = floats(&fixture["full"]["last_logits"]);
    let logit_diff = max_abs_diff(&got.full.last_logits, &want_logits);
    eprintln!("last_logits max abs diff: {logit_diff:e}");
    assert!(logit_diff <= 1e-3, "last_logits differ by {logit_diff}");
    assert_eq!(
        kvpress::models::argmax(&got.full.last_logits),
        kvpress::models::argmax(&want_logits)
    );

    for field in ["keys_first4", "values_first4"] {
        for layer in ["0", "15", "29"] {
            let got_values = match field {
                "keys_first4" => &got.full.keys_first4[layer],
                _ => &got.full.values_first4[layer],
            };
            let got_values: Vec<f32> = got_values.iter().flatten().flatten().copied().collect();
            let diff = max_abs_diff(&got_values, &floats(&fixture["full"][field][layer]));
            eprintln!("{field}[{layer}] max abs diff: {diff:e}");
            assert!(diff <= 1e-4, "{field} of layer {layer} differ by {diff}");
        }
    }

    assert_eq!(
        got.full.answer_ids,
        ids(&fixture["full"]["answer_ids"]),
        "greedy answer"
    );
    assert_eq!(
        got.full.answer_text,
        fixture["full"]["answer_text"].as_str().unwrap()
    );

    // The catalogue fixture (same prompt) also has the first answer token's logits, the
    // question fed into the full cache.
    let catalogue = reference::fixture("niah-noise-1k.catalogue");
    assert_eq!(ids(&catalogue["context_ids"]), got.context_ids);
    let want = floats(&catalogue["full"]["answer_first_logits"]);
    let diff = max_abs_diff(&got.full.answer_first_logits, &want);
    eprintln!("full answer_first_logits max abs diff: {diff:e}");
    assert!(diff <= 1e-3, "answer_first_logits differ by {diff}");
}

#[test]
fn quantized_run_gives_the_reference_answer() {
    // Q4_1 weights computed with f32 activations equal the dequantized weights up to summation
    // order, so the greedy answer is the reference one and logits stay close.
    let fixture = fixture();
    let model = default_model(WeightMode::Quantized);
    let got = trace_fixture_prompt(&model, &fixture);
    let diff = max_abs_diff(
        &got.full.last_logits,
        &floats(&fixture["full"]["last_logits"]),
    );
    eprintln!("quantized last_logits max abs diff: {diff:e}");
    assert!(diff <= 1e-2, "quantized logits differ by {diff}");
    assert_eq!(
        got.full.answer_ids,
        ids(&fixture["full"]["answer_ids"]),
        "greedy answer"
    );
}
