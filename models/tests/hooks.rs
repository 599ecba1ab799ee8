//! The hook point inside each attention layer: what a hook sees, and what it may do to the cache.

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::{Tensor, D};
use common::*;
use kvpress_core::{AttentionHook, ForwardPhase, LayerContext, NoOpHook};
use kvpress_models::{GenerationConfig, Model, WeightMode};

fn qwen3_model() -> (TinyModel, Model) {
    let tiny = Spec::new(Arch::Qwen3).build();
    let loaded = tiny.gguf(GgmlDType::F32).load(F32).unwrap();
    (tiny, loaded.model)
}

fn run(model: &Model, hook: Option<&mut dyn AttentionHook>, decode_steps: &[u32]) -> Vec<Vec<f32>> {
    let mut hook = hook;
    let mut cache = model.new_cache();
    let mut out = Vec::new();
    let logits = model
        .forward(&ids(&PROMPT), &mut cache, hook.as_deref_mut())
        .unwrap();
    out.push(flat(&logits));
    for &t in decode_steps {
        let logits = model
            .forward(&ids(&[t]), &mut cache, hook.as_deref_mut())
            .unwrap();
        out.push(flat(&logits));
    }
    out
}

#[test]
fn no_op_hook_is_bit_identical_to_no_hook() {
    for arch in Arch::ALL {
        for mode in [F32, WeightMode::Quantized] {
            let tiny = Spec::new(arch).build();
            let dtype = if mode == F32 {
                GgmlDType::F32
            } else {
                GgmlDType::Q8_0
            };
            let model = tiny.gguf(dtype).load(mode).unwrap().model;
            let steps = [4, 17, 34];
            let without = run(&model, None, &steps);
            let with = run(&model, Some(&mut NoOpHook), &steps);
            assert_eq!(without.len(), 4);
            assert_eq!(
                without, with,
                "{arch:?} {mode:?}: NoOpHook changed the logits"
            );
        }
    }
}

#[test]
fn no_op_hook_does_not_change_generation() {
    let (_, model) = qwen3_model();
    let config = GenerationConfig {
        max_new_tokens: 6,
        ..Default::default()
    };
    let mut cache = model.new_cache();
    let plain =
        kvpress_models::generate(&model, &mut cache, &PROMPT, &[], &config, None, &mut |_| {
            Ok(())
        })
        .unwrap();
    let mut cache = model.new_cache();
    let hooked = kvpress_models::generate(
        &model,
        &mut cache,
        &PROMPT,
        &[],
        &config,
        Some(&mut NoOpHook),
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!(plain.tokens, hooked.tokens);
    assert_eq!(plain.tokens.len(), 6);
}

/// What the recorder saw in one call.
#[derive(Debug)]
struct Seen {
    layer_idx: usize,
    n_layers: usize,
    phase: ForwardPhase,
    position_offset: usize,
    shape: (usize, usize, usize),
    hidden_states: Vec<usize>,
    queries: Vec<usize>,
    keys: Vec<usize>,
    values: Vec<usize>,
    cache_len: usize,
    weights: Option<Tensor>,
    query_weight: Vec<usize>,
    output_weight: Vec<usize>,
    query_bias: Option<Vec<usize>>,
    query_norm: Option<(Vec<usize>, f64)>,
    cached_keys: Option<Vec<usize>>,
}

/// Records every call; asks for attention weights on layer 0 only.
#[derive(Default)]
struct Recorder {
    seen: Vec<Seen>,
    asked: Vec<(usize, ForwardPhase)>,
}

impl AttentionHook for Recorder {
    fn wants_attention_weights(&self, layer_idx: usize, _phase: ForwardPhase) -> bool {
        layer_idx == 0
    }

    fn after_attention(&mut self, c: &mut LayerContext<'_>) -> kvpress_core::Result<()> {
        self.asked.push((c.layer_idx, c.phase));
        self.seen.push(Seen {
            layer_idx: c.layer_idx,
            n_layers: c.n_layers,
            phase: c.phase,
            position_offset: c.position_offset,
            shape: (c.shape.n_heads, c.shape.n_kv_heads, c.shape.head_dim),
            hidden_states: c.hidden_states.dims().to_vec(),
            queries: c.queries.dims().to_vec(),
            keys: c.keys.dims().to_vec(),
            values: c.values.dims().to_vec(),
            cache_len: c.cache.len(),
            weights: c.attention_weights.cloned(),
            query_weight: c.projections.query_weight()?.dims().to_vec(),
            output_weight: c.projections.output_weight()?.dims().to_vec(),
            query_bias: c.projections.query_bias()?.map(|b| b.dims().to_vec()),
            query_norm: c
                .projections
                .query_norm()
                .map(|(w, eps)| (w.dims().to_vec(), eps)),
            cached_keys: c.cache.keys_values()?.map(|(k, _)| k.dims().to_vec()),
        });
        Ok(())
    }
}

#[test]
fn recorder_sees_shapes_phases_positions_and_weights_of_layer_zero() {
    let (tiny, model) = qwen3_model();
    let s = tiny.spec;
    let (h, hkv, d) = (s.n_heads, s.n_kv_heads, s.head_dim);
    let n = PROMPT.len();
    let mut recorder = Recorder::default();
    let mut cache = model.new_cache();
    let hooked = model
        .forward(&ids(&PROMPT), &mut cache, Some(&mut recorder))
        .unwrap();
    let plain = last_logits(&model, &PROMPT);
    let diff = max_abs_diff(&flat(&hooked), &plain);
    assert!(
        diff < 1e-5,
        "computing attention weights changed the logits by {diff}"
    );
    let decode = [7u32, 9];
    for &t in &decode {
        model
            .forward(&ids(&[t]), &mut cache, Some(&mut recorder))
            .unwrap();
    }

    assert_eq!(
        recorder.seen.len(),
        3 * s.n_layers,
        "one call per layer and forward"
    );
    for (call, seen) in recorder.seen.iter().enumerate() {
        let forward = call / s.n_layers;
        let (phase, offset, n_new) = match forward {
            0 => (ForwardPhase::Prefill, 0, n),
            f => (ForwardPhase::Decode, n + f - 1, 1),
        };
        let cache_len = offset + n_new;
        assert_eq!(seen.layer_idx, call % s.n_layers, "layers in order");
        assert_eq!(seen.n_layers, s.n_layers);
        assert_eq!(seen.phase, phase);
        assert_eq!(seen.position_offset, offset);
        assert_eq!(seen.shape, (h, hkv, d));
        assert_eq!(seen.hidden_states, vec![1, n_new, s.hidden]);
        assert_eq!(seen.queries, vec![1, h, n_new, d]);
        assert_eq!(seen.keys, vec![1, hkv, n_new, d]);
        assert_eq!(seen.values, vec![1, hkv, n_new, d]);
        assert_eq!(
            seen.cache_len, cache_len,
            "the cache already holds the new tokens"
        );
        assert_eq!(seen.cached_keys, Some(vec![1, hkv, cache_len, d]));
        assert_eq!(seen.query_weight, vec![h * d, s.hidden]);
        assert_eq!(seen.output_weight, vec![s.hidden, h * d]);
        assert_eq!(seen.query_bias, None, "qwen3 has no q bias");
        // GGUF stores epsilon as an f32.
        let (norm_dims, eps) = seen.query_norm.clone().expect("qwen3 normalises queries");
        assert_eq!(norm_dims, vec![d]);
        assert!((eps - s.rms_norm_eps).abs() < 1e-12, "{eps}");

        match (&seen.weights, seen.layer_idx) {
            (Some(w), 0) => {
                assert_eq!(w.dims(), &[1, h, n_new, cache_len]);
                let sums = flat(&w.sum(D::Minus1).unwrap());
                assert!(
                    sums.iter().all(|x| (x - 1.0).abs() < 1e-5),
                    "rows must sum to 1: {sums:?}"
                );
                let values = flat(w);
                assert!(values.iter().all(|&x| (0.0..=1.0).contains(&x)));
                if phase == ForwardPhase::Prefill {
                    // Causal: query i gives zero weight to keys after i.
                    let heads: Vec<Vec<Vec<f32>>> = w.squeeze(0).unwrap().to_vec3().unwrap();
                    for head in &heads {
                        for (i, row) in head.iter().enumerate() {
                            assert!(
                                row[i + 1..].iter().all(|&x| x == 0.0),
                                "query {i} sees the future"
                            );
                            assert!(row[i] > 0.0);
                        }
                    }
                }
            }
            (None, 0) => panic!("layer 0 asked for attention weights and got none"),
            (Some(_), layer) => panic!("layer {layer} did not ask for attention weights"),
            (None, _) => {}
        }
    }
    assert_eq!(recorder.asked.len(), recorder.seen.len());
}

#[test]
fn projections_expose_biases_for_qwen2_and_no_norm_for_llama() {
    for (arch, has_bias, has_norm) in [(Arch::Qwen2, true, false), (Arch::Llama, false, false)] {
        let tiny = Spec::new(arch).build();
        let model = tiny
            .gguf(GgmlDType::F32)
            .load(WeightMode::Quantized)
            .unwrap()
            .model;
        let mut recorder = Recorder::default();
        let mut cache = model.new_cache();
        model
            .forward(&ids(&PROMPT), &mut cache, Some(&mut recorder))
            .unwrap();
        for seen in &recorder.seen {
            let q_dim = tiny.spec.q_dim();
            assert_eq!(seen.query_bias.is_some(), has_bias, "{arch:?}");
            if has_bias {
                assert_eq!(seen.query_bias, Some(vec![q_dim]));
            }
            assert_eq!(seen.query_norm.is_some(), has_norm, "{arch:?}");
            assert_eq!(seen.query_weight, vec![q_dim, tiny.spec.hidden]);
        }
    }
}

/// After the prefill, keeps only the last `keep` tokens of every layer.
struct KeepLast {
    keep: usize,
    calls: usize,
}

impl AttentionHook for KeepLast {
    fn after_attention(&mut self, c: &mut LayerContext<'_>) -> kvpress_core::Result<()> {
        if c.phase != ForwardPhase::Prefill {
            return Ok(());
        }
        self.calls += 1;
        let (k, v) = c.cache.keys_values()?.expect("prefill filled the cache");
        let len = k.dim(2)?;
        let start = len.saturating_sub(self.keep);
        let k = k.narrow(2, start, len - start)?.contiguous()?;
        let v = v.narrow(2, start, len - start)?.contiguous()?;
        c.cache.replace(&k, &v)?;
        Ok(())
    }
}

#[test]
fn a_hook_that_shortens_the_cache_keeps_positions_counting() {
    let (tiny, model) = qwen3_model();
    let n_layers = tiny.spec.n_layers;
    let mut hook = KeepLast { keep: 3, calls: 0 };
    let mut cache = model.new_cache();
    let prefill = model
        .forward(&ids(&PROMPT), &mut cache, Some(&mut hook))
        .unwrap();
    assert_eq!(hook.calls, n_layers);
    // The hook runs after attention, so the prefill's own logits are not affected.
    assert_eq!(flat(&prefill), last_logits(&model, &PROMPT));
    assert_eq!(cache.lengths(), vec![3; n_layers]);
    assert_eq!(cache.seen_tokens(), PROMPT.len());

    let mut reference = model.new_cache();
    forward_vec(&model, &mut reference, &PROMPT);
    let steps = [4u32, 9, 16, 25];
    let mut any_different = false;
    for (i, &t) in steps.iter().enumerate() {
        let logits = flat(
            &model
                .forward(&ids(&[t]), &mut cache, Some(&mut hook))
                .unwrap(),
        );
        assert!(logits.iter().all(|x| x.is_finite()));
        assert_eq!(
            cache.seen_tokens(),
            PROMPT.len() + i + 1,
            "positions keep counting"
        );
        assert_eq!(
            cache.lengths(),
            vec![3 + i + 1; n_layers],
            "cache grows from the kept tokens"
        );
        let full = forward_vec(&model, &mut reference, &[t]);
        any_different |= max_abs_diff(&logits, &full) > 1e-4;
    }
    assert_eq!(hook.calls, n_layers, "decode forwards are Decode phase");
    assert!(
        any_different,
        "evicting 7 of 10 tokens had no effect on decoding"
    );
}

#[test]
fn shortened_cache_equals_a_manually_built_one() {
    // Decoding after the hook kept the last 3 tokens equals decoding over a cache into which the
    // same 3 keys/values were put by hand, with seen_tokens set to the prompt length: the model
    // takes positions from seen_tokens and attends over exactly what the cache holds.
    let (tiny, model) = qwen3_model();
    let mut hook = KeepLast { keep: 3, calls: 0 };
    let mut pressed = model.new_cache();
    model
        .forward(&ids(&PROMPT), &mut pressed, Some(&mut hook))
        .unwrap();

    let mut manual = model.new_cache();
    forward_vec(&model, &mut manual, &PROMPT);
    for layer in 0..tiny.spec.n_layers {
        let (k, v) = manual.layer(layer).unwrap().keys_values().unwrap().unwrap();
        let k = k
            .narrow(2, PROMPT.len() - 3, 3)
            .unwrap()
            .contiguous()
            .unwrap();
        let v = v
            .narrow(2, PROMPT.len() - 3, 3)
            .unwrap()
            .contiguous()
            .unwrap();
        manual.layer_mut(layer).unwrap().replace(&k, &v).unwrap();
    }
    assert_eq!(manual.lengths(), pressed.lengths());
    assert_eq!(manual.seen_tokens(), pressed.seen_tokens());
    for t in [4u32, 9, 16] {
        let a = flat(&model.forward(&ids(&[t]), &mut pressed, None).unwrap());
        let b = forward_vec(&model, &mut manual, &[t]);
        assert_eq!(a, b);
    }
}

#[test]
fn replacing_the_cache_with_its_own_content_changes_nothing() {
    let (_, model) = qwen3_model();
    let mut hook = KeepLast {
        keep: usize::MAX,
        calls: 0,
    };
    let steps = [3u32, 5, 8];
    let with = run(&model, Some(&mut hook), &steps);
    let without = run(&model, None, &steps);
    for (a, b) in with.iter().zip(&without) {
        assert!(max_abs_diff(a, b) < 1e-6);
    }
}

#[test]
fn hook_errors_propagate_out_of_forward() {
    struct Fails;
    impl AttentionHook for Fails {
        fn after_attention(&mut self, c: &mut LayerContext<'_>) -> kvpress_core::Result<()> {
            Err(kvpress_core::Error::InvalidArgument(format!(
                "refused layer {}",
                c.layer_idx
            )))
        }
    }
    let (_, model) = qwen3_model();
    let mut cache = model.new_cache();
    let err = model
        .forward(&ids(&PROMPT), &mut cache, Some(&mut Fails))
        .unwrap_err();
    assert!(matches!(err, kvpress_models::Error::Core(_)), "{err:?}");
    assert!(err.to_string().contains("refused layer 0"), "{err}");
}

#[test]
fn a_failed_forward_leaves_the_cache_as_it_was() {
    // Fails in the last layer of the second forward: earlier layers had already appended.
    struct FailsLate {
        forwards: usize,
        n_layers: usize,
    }
    impl AttentionHook for FailsLate {
        fn after_attention(&mut self, c: &mut LayerContext<'_>) -> kvpress_core::Result<()> {
            if c.layer_idx + 1 == self.n_layers {
                self.forwards += 1;
                if self.forwards == 2 {
                    return Err(kvpress_core::Error::InvalidArgument("late failure".into()));
                }
            }
            Ok(())
        }
    }
    let (_, model) = qwen3_model();
    let mut hook = FailsLate {
        forwards: 0,
        n_layers: model.config().n_layers,
    };
    let mut cache = model.new_cache();
    model
        .forward(&ids(&PROMPT), &mut cache, Some(&mut hook))
        .unwrap();
    let (lengths, seen) = (cache.lengths(), cache.seen_tokens());
    assert!(model
        .forward(&ids(&PROMPT[..2]), &mut cache, Some(&mut hook))
        .is_err());
    assert_eq!(cache.lengths(), lengths);
    assert_eq!(cache.seen_tokens(), seen);
    // The cache still works: the same step without the failing hook succeeds.
    model.forward(&ids(&PROMPT[..2]), &mut cache, None).unwrap();
    assert_eq!(cache.seen_tokens(), seen + 2);
}

#[test]
fn generate_calls_the_hook_in_prefill_and_every_decode_step() {
    let (tiny, model) = qwen3_model();
    let mut recorder = Recorder::default();
    let mut cache = model.new_cache();
    let config = GenerationConfig {
        max_new_tokens: 4,
        ..Default::default()
    };
    let out = kvpress_models::generate(
        &model,
        &mut cache,
        &PROMPT,
        &[],
        &config,
        Some(&mut recorder),
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!(out.tokens.len(), 4);
    // Prefill + 3 decode forwards (the 4th token is chosen from the 3rd decode's logits).
    let forwards = recorder.seen.len() / tiny.spec.n_layers;
    assert_eq!(forwards, 4);
    let phases: Vec<ForwardPhase> = recorder
        .seen
        .iter()
        .step_by(tiny.spec.n_layers)
        .map(|s| s.phase)
        .collect();
    assert_eq!(
        phases,
        vec![
            ForwardPhase::Prefill,
            ForwardPhase::Decode,
            ForwardPhase::Decode,
            ForwardPhase::Decode
        ]
    );
    assert_eq!(cache.seen_tokens(), PROMPT.len() + 3);
}
