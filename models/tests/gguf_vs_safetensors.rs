//! The same random weights written as an F32 GGUF file and as a Hugging Face safetensors folder
//! load into the same model: same config, same logits.

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use common::*;
use kvpress_models::param::{LayerParam, Param};
use kvpress_models::{Architecture, LogitsFor, WeightMode};

const TOL: f32 = 1e-4;

fn check_gguf_matches_folder(arch: Arch, tied: bool) {
    let tiny = Spec::new(arch).tied(tied).build();
    let gguf = tiny.gguf(GgmlDType::F32).load(F32).unwrap();
    let folder = tiny.hf_folder(1);
    let hf = kvpress_models::load_model(folder.path(), None, &Device::Cpu).unwrap();

    let (g, h) = (gguf.model.config(), hf.model.config());
    assert_eq!(g.architecture, h.architecture);
    assert_eq!(g.head_dim, tiny.spec.head_dim, "{arch:?}");
    assert_eq!(
        g.tie_word_embeddings, tied,
        "GGUF tie flag follows the absence of output.weight"
    );
    assert_eq!(h.tie_word_embeddings, tied);
    assert_eq!(
        (
            g.vocab_size,
            g.hidden_size,
            g.intermediate_size,
            g.n_layers,
            g.n_heads,
            g.n_kv_heads,
            g.max_position_embeddings
        ),
        (
            h.vocab_size,
            h.hidden_size,
            h.intermediate_size,
            h.n_layers,
            h.n_heads,
            h.n_kv_heads,
            h.max_position_embeddings
        ),
    );
    assert_eq!(g.rope_theta, h.rope_theta);
    assert!((g.rms_norm_eps - h.rms_norm_eps).abs() < 1e-12);
    assert_eq!(hf.model.dtype(), DType::F32, "folders default to dense f32");

    let a = last_logits(&gguf.model, &PROMPT);
    let b = last_logits(&hf.model, &PROMPT);
    let diff = max_abs_diff(&a, &b);
    assert!(
        diff < TOL,
        "{arch:?} tied={tied}: GGUF vs safetensors logits differ by {diff}"
    );
    // Random weights give non-degenerate logits, so the comparison means something.
    assert!(
        max_abs(&a) > 0.1,
        "{arch:?}: logits are suspiciously small: {a:?}"
    );
    assert!(a.iter().all(|x| x.is_finite()));
}

#[test]
fn llama_gguf_equals_safetensors_untied() {
    check_gguf_matches_folder(Arch::Llama, false);
}

#[test]
fn llama_gguf_equals_safetensors_tied() {
    check_gguf_matches_folder(Arch::Llama, true);
}

#[test]
fn qwen2_gguf_equals_safetensors_untied() {
    check_gguf_matches_folder(Arch::Qwen2, false);
}

#[test]
fn qwen2_gguf_equals_safetensors_tied() {
    check_gguf_matches_folder(Arch::Qwen2, true);
}

#[test]
fn qwen3_gguf_equals_safetensors_untied() {
    check_gguf_matches_folder(Arch::Qwen3, false);
}

#[test]
fn qwen3_gguf_equals_safetensors_tied() {
    check_gguf_matches_folder(Arch::Qwen3, true);
}

#[test]
fn architectures_and_head_dim_come_from_the_files() {
    let expected = [
        (Arch::Llama, Architecture::Llama),
        (Arch::Qwen2, Architecture::Qwen2),
        (Arch::Qwen3, Architecture::Qwen3),
    ];
    for (arch, want) in expected {
        let tiny = Spec::new(arch).build();
        let config = tiny
            .gguf(GgmlDType::F32)
            .open()
            .unwrap()
            .model_config()
            .unwrap();
        assert_eq!(config.architecture, want);
        assert_eq!(config.vocab_size, TOKENS.len());
        assert_eq!(config.n_heads, 4);
        assert_eq!(config.n_kv_heads, 2);
        assert_eq!(config.max_position_embeddings, 64);
        assert!(!config.tie_word_embeddings);
    }
    // Qwen3: head_dim comes from `qwen3.attention.key_length`, not hidden / heads.
    let tiny = Spec::new(Arch::Qwen3).build();
    let config = tiny
        .gguf(GgmlDType::F32)
        .open()
        .unwrap()
        .model_config()
        .unwrap();
    assert_eq!(config.head_dim, 32);
    assert_ne!(config.head_dim, config.hidden_size / config.n_heads);
    // "mistral" is read as llama.
    let llama = Spec::new(Arch::Llama).build();
    let dir = llama.hf_folder(1);
    let mut json = llama.hf_config();
    json["model_type"] = "mistral".into();
    std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
    let loaded = kvpress_models::load_model(dir.path(), None, &Device::Cpu).unwrap();
    assert_eq!(loaded.model.config().architecture, Architecture::Llama);
}

#[test]
fn multi_file_safetensors_folder_gives_the_same_logits() {
    for arch in Arch::ALL {
        let tiny = Spec::new(arch).build();
        let one = tiny.hf_folder(1);
        let three = tiny.hf_folder(3);
        let n_files = std::fs::read_dir(three.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "safetensors")
            })
            .count();
        assert_eq!(n_files, 3);
        let a = kvpress_models::load_model(one.path(), None, &Device::Cpu).unwrap();
        let b = kvpress_models::load_model(three.path(), None, &Device::Cpu).unwrap();
        let (la, lb) = (
            last_logits(&a.model, &PROMPT),
            last_logits(&b.model, &PROMPT),
        );
        assert_eq!(
            la, lb,
            "{arch:?}: splitting the weights over files must not change anything"
        );
    }
}

#[test]
fn f32_gguf_in_quantized_mode_equals_dense_mode() {
    for arch in Arch::ALL {
        let tiny = Spec::new(arch).build();
        let gguf = tiny.gguf(GgmlDType::F32);
        let quantized = gguf.load(WeightMode::Quantized).unwrap();
        let dense = gguf.load(F32).unwrap();
        assert_eq!(quantized.model.dtype(), DType::F32);
        let diff = max_abs_diff(
            &last_logits(&quantized.model, &PROMPT),
            &last_logits(&dense.model, &PROMPT),
        );
        assert!(diff < TOL, "{arch:?}: {diff}");
    }
}

#[test]
fn llama_rope_row_permutation_is_undone_and_matters() {
    let tiny = Spec::new(Arch::Llama).build();
    let hf = kvpress_models::load_model(tiny.hf_folder(1).path(), None, &Device::Cpu).unwrap();
    let reference = last_logits(&hf.model, &PROMPT);

    // Written the way llama.cpp writes llama: permuted, undone by the loader.
    let permuted = tiny.gguf_with(GgmlDType::F32, true).load(F32).unwrap();
    assert!(max_abs_diff(&last_logits(&permuted.model, &PROMPT), &reference) < TOL);

    // Without the permutation in the file, the loader's un-permutation scrambles the heads:
    // the logits must differ, which shows the comparison above is sensitive to the row order.
    let unpermuted = tiny.gguf_with(GgmlDType::F32, false).load(F32).unwrap();
    let diff = max_abs_diff(&last_logits(&unpermuted.model, &PROMPT), &reference);
    assert!(diff > 1e-3, "row order had no effect ({diff})");

    // Qwen GGUFs keep the HF order: writing them permuted must break equality.
    let qwen = Spec::new(Arch::Qwen2).build();
    let hf = kvpress_models::load_model(qwen.hf_folder(1).path(), None, &Device::Cpu).unwrap();
    let permuted = qwen.gguf_with(GgmlDType::F32, true).load(F32).unwrap();
    let diff = max_abs_diff(
        &last_logits(&permuted.model, &PROMPT),
        &last_logits(&hf.model, &PROMPT),
    );
    assert!(diff > 1e-3, "qwen2 must not be un-permuted ({diff})");
}

#[test]
fn permutation_helper_matches_the_documented_row_mapping() {
    // GGUF row 2i = HF row i, GGUF row 2i+1 = HF row i + head_dim/2, per head.
    let (n_heads, head_dim, cols) = (2, 8, 3);
    let data: Vec<f32> = (0..n_heads * head_dim * cols).map(|x| x as f32).collect();
    let hf = candle_core::Tensor::from_vec(data, (n_heads * head_dim, cols), &Device::Cpu).unwrap();
    let gguf = permute_rows(&hf, n_heads);
    let hf_rows: Vec<Vec<f32>> = hf.to_vec2().unwrap();
    let gguf_rows: Vec<Vec<f32>> = gguf.to_vec2().unwrap();
    for head in 0..n_heads {
        for i in 0..head_dim / 2 {
            assert_eq!(
                gguf_rows[head * head_dim + 2 * i],
                hf_rows[head * head_dim + i]
            );
            assert_eq!(
                gguf_rows[head * head_dim + 2 * i + 1],
                hf_rows[head * head_dim + i + head_dim / 2]
            );
        }
    }
}

#[test]
fn all_token_logits_end_with_the_last_token_logits() {
    for arch in Arch::ALL {
        let tiny = Spec::new(arch).build();
        let loaded = tiny.gguf(GgmlDType::F32).load(F32).unwrap();
        let model = &loaded.model;
        let mut cache = model.new_cache();
        let all = model
            .forward_logits(&ids(&PROMPT), &mut cache, None, LogitsFor::AllTokens)
            .unwrap();
        assert_eq!(all.dims(), &[1, PROMPT.len(), TOKENS.len()]);
        assert_eq!(cache.seen_tokens(), PROMPT.len());
        let last = all.narrow(1, PROMPT.len() - 1, 1).unwrap();
        let diff = max_abs_diff(&flat(&last), &last_logits(model, &PROMPT));
        assert!(diff < 1e-5, "{arch:?}: {diff}");
    }
}

#[test]
fn projection_weights_are_exposed_in_hugging_face_order() {
    // query_weight() must return W_q in the HF (rotate-half) row order whatever the file format,
    // so presses that use it see the same matrix for GGUF and safetensors.
    use kvpress_core::{AttentionHook, LayerContext};
    struct Grab(Vec<(usize, Vec<f32>, Vec<f32>)>);
    impl AttentionHook for Grab {
        fn after_attention(&mut self, c: &mut LayerContext<'_>) -> kvpress_core::Result<()> {
            let q = c.projections.query_weight()?;
            let o = c.projections.output_weight()?;
            self.0.push((c.layer_idx, flat(&q), flat(&o)));
            Ok(())
        }
    }
    for arch in Arch::ALL {
        let tiny = Spec::new(arch).build();
        let loaded = tiny
            .gguf(GgmlDType::F32)
            .load(WeightMode::Quantized)
            .unwrap();
        let mut grab = Grab(Vec::new());
        let mut cache = loaded.model.new_cache();
        loaded
            .model
            .forward(&ids(&PROMPT), &mut cache, Some(&mut grab))
            .unwrap();
        assert_eq!(grab.0.len(), tiny.spec.n_layers);
        for (layer, q, o) in &grab.0 {
            let want_q = flat(tiny.weight(Param::Layer(*layer, LayerParam::QueryWeight)));
            let want_o = flat(tiny.weight(Param::Layer(*layer, LayerParam::OutputWeight)));
            assert_eq!(q, &want_q, "{arch:?} layer {layer}: W_q not in HF order");
            assert_eq!(o, &want_o, "{arch:?} layer {layer}: W_o differs");
        }
    }
}
