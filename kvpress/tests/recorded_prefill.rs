//! A prefill recorded once and compressed by several presses gives what compressing during the
//! prefill gives.

use kvpress::candle::Device;
use kvpress::core::press::press_from_toml;
use kvpress::hooks::{ContextSession, PromptSplit, RecordedPrefill};
use kvpress::models::{load_model, GenerationConfig, Sampling};

#[test]
fn one_recorded_prefill_serves_every_press() {
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    let model = load_model(&path, None, &Device::Cpu).expect("the default model loads");
    let context = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/needle-haystack.txt"),
    )
    .unwrap();
    let split = PromptSplit::new(
        &model,
        &context,
        "What is the special magic number for ocean mentioned in the provided text?",
    )
    .unwrap();
    let recorded = RecordedPrefill::record(&model.model, &split.context_ids).unwrap();
    let config = GenerationConfig {
        max_new_tokens: 24,
        sampling: Sampling::Greedy,
    };
    for toml in [
        "press = \"snapkv\"\ncompression_ratio = 0.5\n",
        "press = \"adakv\"\n[inner]\npress = \"expected_attention\"\ncompression_ratio = 0.75\n",
        "press = \"criticalkv\"\n[inner]\npress = \"knorm\"\ncompression_ratio = 0.5\n",
        "press = \"key_rerotation\"\n[inner]\npress = \"streaming_llm\"\ncompression_ratio = 0.5\n",
    ] {
        let press = press_from_toml(toml).unwrap();
        let (mut direct, direct_report) =
            ContextSession::compress(&model.model, &split.context_ids, press.as_ref(), &[])
                .unwrap();
        let (mut replayed, replayed_report) = recorded
            .compress(&model.model, press.as_ref(), &[])
            .unwrap();
        assert_eq!(
            direct.cache().lengths(),
            replayed.cache().lengths(),
            "{toml}"
        );
        assert_eq!(
            direct.cache().seen_tokens(),
            replayed.cache().seen_tokens(),
            "{toml}"
        );
        assert_eq!(direct_report.kv_bytes, replayed_report.kv_bytes, "{toml}");
        for (a, b) in direct_report.layers.iter().zip(&replayed_report.layers) {
            assert_eq!(a.selection, b.selection, "{toml}: layer {}", a.layer_idx);
        }
        let eos = model.tokenizer.eos_ids();
        let a = direct.answer(&model.model, &split.question_ids, eos, &config, &mut |_| {
            Ok(())
        });
        let b = replayed.answer(&model.model, &split.question_ids, eos, &config, &mut |_| {
            Ok(())
        });
        assert_eq!(a.unwrap().tokens, b.unwrap().tokens, "{toml}");
    }
    let weights =
        press_from_toml("press = \"observed_attention\"\ncompression_ratio = 0.5\n").unwrap();
    assert!(recorded
        .compress(&model.model, weights.as_ref(), &[])
        .is_err());
}

#[test]
fn several_ratios_at_once_equal_one_press_per_ratio() {
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    let model = load_model(&path, None, &Device::Cpu).expect("the default model loads");
    let context = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/needle-haystack.txt"),
    )
    .unwrap();
    let ids = PromptSplit::context_ids(&model, &context).unwrap();
    let recorded = RecordedPrefill::record(&model.model, &ids).unwrap();
    let ratios = [0.0, 0.25, 0.5, 0.875];
    // Scorers that score once (snapkv, pyramidkv, expected attention inside adakv), one that
    // depends on the ratio (streaming_llm) and a wrapper that loops (criticalkv).
    for inner in [
        "press = \"snapkv\"",
        "press = \"pyramidkv\"",
        "press = \"streaming_llm\"",
        "press = \"adakv\"\n[inner]\npress = \"expected_attention\"",
        "press = \"criticalkv\"\n[inner]\npress = \"snapkv\"",
    ] {
        // The ratio goes to the innermost press, as in eval configs.
        let at = |ratio: f64| {
            press_from_toml(&format!("{inner}\ncompression_ratio = {ratio}\n")).unwrap()
        };
        let together = recorded
            .compress_at_ratios(&model.model, at(0.5).as_ref(), &ratios, &[3])
            .unwrap();
        assert_eq!(together.len(), ratios.len());
        for ((_, report), &ratio) in together.iter().zip(&ratios) {
            let (_, alone) = recorded
                .compress(&model.model, at(ratio).as_ref(), &[3])
                .unwrap();
            assert_eq!(report.kv_bytes, alone.kv_bytes, "{inner} at {ratio}");
            for (a, b) in report.layers.iter().zip(&alone.layers) {
                assert_eq!(
                    a.selection, b.selection,
                    "{inner} at {ratio}: layer {}",
                    a.layer_idx
                );
                assert_eq!(a.scores.is_some(), b.scores.is_some());
                if let (Some(x), Some(y)) = (&a.scores, &b.scores) {
                    let diff = (x - y).unwrap().abs().unwrap().max_all().unwrap();
                    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
                }
            }
        }
    }
}
