//! Decode-time compression on the default model: a long generation keeps every layer's cache
//! within `target + interval` tokens, and a schedule that never removes anything generates
//! exactly what plain generation does.

use kvpress::candle::Device;
use kvpress::core::press::{press_from_toml, Press};
use kvpress::hooks::PressHook;
use kvpress::models::{generate, load_model, ChatMessage, GenerationConfig, LoadedModel, Sampling};

fn model() -> LoadedModel {
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    load_model(&path, None, &Device::Cpu).expect("the default model loads")
}

fn prompt(model: &LoadedModel) -> Vec<u32> {
    let template = model.chat_template.as_ref().unwrap();
    let text = template
        .render(
            &[ChatMessage::user("Write a very long story about the sea.")],
            true,
        )
        .unwrap();
    model.tokenizer.encode(&text, false).unwrap()
}

fn run(model: &LoadedModel, press: Option<&dyn Press>, n: usize) -> (Vec<u32>, usize, Vec<usize>) {
    let ids = prompt(model);
    let mut cache = model.model.new_cache();
    let config = GenerationConfig {
        max_new_tokens: n,
        sampling: Sampling::Greedy,
    };
    let mut hook = press.map(|p| PressHook::new(p, &[]).unwrap());
    // No end-of-sequence token: generate exactly `n` tokens.
    let output = generate(
        &model.model,
        &mut cache,
        &ids,
        &[],
        &config,
        hook.as_mut()
            .map(|h| h as &mut dyn kvpress::core::AttentionHook),
        &mut |_| Ok(()),
    )
    .unwrap();
    // The last generated token is not fed back.
    assert_eq!(
        cache.seen_tokens(),
        ids.len() + n - 1,
        "positions count every token"
    );
    let peak = hook.map_or(0, |h| h.peak_cache_len());
    (output.tokens, peak, cache.lengths())
}

#[test]
fn a_3000_token_generation_stays_within_target_plus_interval() {
    let model = model();
    let press = press_from_toml(
        "press = \"decoding\"\ncompression_interval = 256\ntarget_size = 1024\n\
         hidden_states_buffer_size = 256\n[inner]\npress = \"snapkv\"\n",
    )
    .unwrap();
    let (tokens, peak, lengths) = run(&model, Some(press.as_ref()), 3000);
    assert_eq!(tokens.len(), 3000);
    assert!(peak <= 1024 + 256, "peak cache length {peak}");
    assert!(peak > 1024, "compression happened after growth ({peak})");
    assert!(lengths.iter().all(|&l| l <= 1024 + 256), "{lengths:?}");
}

#[test]
fn cam_merges_within_its_budget_and_repeats_itself_from_its_seed() {
    let model = model();
    let press = press_from_toml(
        "press = \"cam\"\ncompression_interval = 64\ntarget_size = 128\n\
         hidden_states_buffer_size = 64\nmerge_budget = 8\n[inner]\npress = \"knorm\"\n",
    )
    .unwrap();
    let (tokens, peak, lengths) = run(&model, Some(press.as_ref()), 300);
    assert_eq!(tokens.len(), 300);
    assert!(peak <= 128 + 64, "peak cache length {peak}");
    assert!(peak > 128, "compression happened after growth ({peak})");
    assert!(lengths.iter().all(|&l| l <= 128 + 64), "{lengths:?}");
    let (again, _, _) = run(&model, Some(press.as_ref()), 300);
    assert_eq!(tokens, again, "the same seed draws the same merges");
}

#[test]
fn a_schedule_that_keeps_everything_generates_like_plain_generation() {
    let model = model();
    let press = press_from_toml(
        "press = \"compression_ratio_decoding\"\ntarget_compression_ratio = 0.0\n\
         compression_interval = 16\nhidden_states_buffer_size = 64\n[inner]\npress = \"snapkv\"\n\
         window_size = 16\n",
    )
    .unwrap();
    let (plain, _, _) = run(&model, None, 160);
    let (with_hook, _, _) = run(&model, Some(press.as_ref()), 160);
    assert_eq!(plain, with_hook);
}

#[test]
fn decode_time_compression_works_with_head_wise_budgets() {
    let model = model();
    let cache = head_wise_decode(&model);
    let bytes_per_token = 2 * 64 * 4;
    assert!(cache.bytes_used() <= 30 * 3 * (256 + 128) * bytes_per_token + 30 * 72);
}

/// The same in a 4-bit cache: its heads become ragged at the first compression, and the next
/// ones score their dequantized rows (padded like the flattened cache's) and keep each head's
/// own codes.
#[test]
fn decode_time_compression_works_with_head_wise_budgets_in_a_quantized_cache() {
    let mut model = model();
    model
        .model
        .set_kv_storage(kvpress::models::KvStorage::Quantized(
            kvpress::models::QuantBits::Four,
        ))
        .unwrap();
    let cache = head_wise_decode(&model);
    // 4-bit rows of 64 channels: 32 bytes of codes and two groups' f16 step and minimum, for
    // keys and values; the newest token of each head is still f32.
    let bytes_per_token = 2 * (32 + 2 * 4);
    let newest = 30 * 3 * 2 * 64 * 4;
    assert!(cache.bytes_used() <= 30 * 3 * (256 + 128) * bytes_per_token + newest);
    assert!(
        (0..30).any(|l| {
            let layer = cache.layer(l).unwrap();
            matches!(
                layer.float_snapshot().unwrap(),
                kvpress::core::LayerSnapshot::PerHead { .. }
            )
        }),
        "some layer's heads store different numbers of tokens"
    );
}

/// Generates 600 tokens with decoding(adakv(snapkv)) back to 256 tokens per head on average
/// every 128 steps; returns the cache.
fn head_wise_decode(model: &LoadedModel) -> kvpress::core::ModelCache {
    let press = press_from_toml(
        "press = \"decoding\"\ncompression_interval = 128\ntarget_size = 256\n\
         hidden_states_buffer_size = 128\n[inner]\npress = \"adakv\"\n[inner.inner]\n\
         press = \"snapkv\"\nwindow_size = 32\n",
    )
    .unwrap();
    let ids = prompt(model);
    let mut cache = kvpress::hooks::new_cache_for(&model.model, press.as_ref()).unwrap();
    let mut hook = PressHook::new(press.as_ref(), &[]).unwrap();
    let config = GenerationConfig {
        max_new_tokens: 600,
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
    // Heads share each layer's budget (one head may keep more than 256, others less): the
    // per-head cache stores 256 * 3 tokens per layer right after a compression, and at most
    // `interval` more per head since.
    assert!(
        hook.peak_cache_len() > 256 + 128,
        "some head keeps more than the uniform share"
    );
    cache
}
