//! Every way running a model can go wrong (prompts too long or empty, out-of-vocabulary ids,
//! malformed inputs, invalid sampling settings) gives an `Err` that names the problem (never a
//! panic), and leaves the cache as it was.

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use common::*;
use kvpress_models::{Error, GenerationConfig, LoadedModel};

fn expect_err<T>(result: kvpress_models::Result<T>) -> Error {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn small_model() -> LoadedModel {
    Spec::new(Arch::Qwen2)
        .build()
        .gguf(GgmlDType::F32)
        .load(F32)
        .unwrap()
}

#[test]
fn prompt_longer_than_the_context_is_invalid_input() {
    let loaded = small_model();
    let model = &loaded.model;
    let too_long: Vec<u32> = (0..65).map(|i| 3 + i % 26).collect();
    let mut cache = model.new_cache();
    let err = expect_err(model.forward(&ids(&too_long), &mut cache, None));
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("maximum of 64"), "{message}");
    assert!(message.contains("65"), "{message}");
    assert_eq!(
        cache.seen_tokens(),
        0,
        "a rejected input leaves the cache alone"
    );
    assert_eq!(cache.lengths(), vec![0, 0]);

    // Exactly the maximum is fine; one more token after it is not.
    let exactly: Vec<u32> = too_long[..64].to_vec();
    let logits = model.forward(&ids(&exactly), &mut cache, None).unwrap();
    assert_eq!(logits.dims(), &[1, TOKENS.len()]);
    let err = expect_err(model.forward(&ids(&[5]), &mut cache, None));
    assert!(err.to_string().contains("maximum of 64"), "{err}");
    assert_eq!(cache.seen_tokens(), 64);
    assert_eq!(cache.lengths(), vec![64, 64]);

    // Through generate.
    let mut cache = model.new_cache();
    let err = expect_err(kvpress_models::generate(
        model,
        &mut cache,
        &too_long,
        &[],
        &GenerationConfig::default(),
        None,
        &mut |_| Ok(()),
    ));
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
}

#[test]
fn generation_stops_when_the_context_is_full() {
    let loaded = small_model();
    let model = &loaded.model;
    let prompt: Vec<u32> = (0..60).map(|i| 3 + i % 26).collect();
    let mut cache = model.new_cache();
    let mut seen = Vec::new();
    let config = GenerationConfig {
        max_new_tokens: 10,
        ..Default::default()
    };
    let result =
        kvpress_models::generate(model, &mut cache, &prompt, &[], &config, None, &mut |t| {
            seen.push(t);
            Ok(())
        });
    let output = result.expect("a full context ends generation, it is not an error");
    assert_eq!(output.stop_reason, kvpress_models::StopReason::ContextFull);
    // Positions 60..=63 were decoded (prefill gives token 1, 4 decode steps fill positions
    // 60..=63, the 5th token would need position 64).
    assert_eq!(seen.len(), 5);
    assert_eq!(output.tokens, seen);
    assert_eq!(cache.seen_tokens(), 64);
}

#[test]
fn empty_prompts_are_invalid_input() {
    let loaded = small_model();
    let model = &loaded.model;
    let mut cache = model.new_cache();
    let err = expect_err(kvpress_models::generate(
        model,
        &mut cache,
        &[],
        &[],
        &GenerationConfig::default(),
        None,
        &mut |_| Ok(()),
    ));
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(err.to_string().contains("empty"), "{err}");

    let empty = Tensor::zeros((1, 0), DType::U32, &Device::Cpu).unwrap();
    let err = expect_err(model.forward(&empty, &mut cache, None));
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(err.to_string().contains("empty"), "{err}");
    let no_batch = Tensor::zeros((0, 3), DType::U32, &Device::Cpu).unwrap();
    let err = expect_err(model.forward(&no_batch, &mut cache, None));
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert_eq!(cache.seen_tokens(), 0);
}

#[test]
fn out_of_vocabulary_ids_and_bad_inputs_are_invalid_input() {
    let loaded = small_model();
    let model = &loaded.model;
    let mut cache = model.new_cache();
    for bad in [40u32, 41, u32::MAX] {
        let err = expect_err(model.forward(&ids(&[1, 2, bad]), &mut cache, None));
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&bad.to_string()) && message.contains("vocabulary"),
            "{message}"
        );
    }
    assert_eq!(cache.seen_tokens(), 0);
    // The largest valid id is fine.
    model.forward(&ids(&[39]), &mut cache, None).unwrap();

    // Through generate.
    let mut cache = model.new_cache();
    let err = expect_err(kvpress_models::generate(
        model,
        &mut cache,
        &[1, 40],
        &[],
        &GenerationConfig::default(),
        None,
        &mut |_| Ok(()),
    ));
    assert!(err.to_string().contains("vocabulary"), "{err}");

    // Wrong dtype and rank.
    let mut cache = model.new_cache();
    let floats = Tensor::new(&[[1f32, 2.0]], &Device::Cpu).unwrap();
    let err = expect_err(model.forward(&floats, &mut cache, None));
    assert!(
        matches!(err, Error::InvalidInput(_)) && err.to_string().contains("u32"),
        "{err}"
    );
    let flat_ids = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
    let err = expect_err(model.forward(&flat_ids, &mut cache, None));
    assert!(
        matches!(err, Error::InvalidInput(_)) && err.to_string().contains("(batch, tokens)"),
        "{err}"
    );
    // A cache built for another number of layers.
    let mut wrong_cache = kvpress_models::dense_model_cache(
        3,
        kvpress_models::KvStorage::Float(candle_core::DType::F32),
    );
    let err = expect_err(model.forward(&ids(&[1]), &mut wrong_cache, None));
    assert!(
        matches!(err, Error::InvalidInput(_)) && err.to_string().contains("layers"),
        "{err}"
    );
}

#[test]
fn invalid_sampling_settings_fail_before_touching_the_cache() {
    let loaded = small_model();
    let model = &loaded.model;
    for (temperature, top_p) in [
        (0.0, 0.9),
        (-1.0, 0.9),
        (f64::NAN, 0.9),
        (1.0, 0.0),
        (1.0, 1.5),
    ] {
        let mut cache = model.new_cache();
        let config = GenerationConfig {
            max_new_tokens: 3,
            sampling: kvpress_models::Sampling::TopP {
                temperature,
                top_p,
                seed: 1,
            },
        };
        let err = expect_err(kvpress_models::generate(
            model,
            &mut cache,
            &PROMPT,
            &[],
            &config,
            None,
            &mut |_| Ok(()),
        ));
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        assert_eq!(cache.seen_tokens(), 0);
    }
}
