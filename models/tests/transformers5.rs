//! Hugging Face folders written by transformers 5: `config.json` with `rope_parameters`, the
//! chat template in `chat_template.jinja`. The fixtures in `fixtures/transformers5/` were
//! written by transformers 5 itself (`make.py` there regenerates them; `versions.json` says
//! which version), and the expected renderings come from its `apply_chat_template`.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::*;
use kvpress_models::loader::chat_template_from_folder;
use kvpress_models::{
    default_model, load_model, Architecture, ChatMessage, Error, ModelConfig, TextTokenizer,
};
use serde::Deserialize;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/transformers5")
        .join(name)
}

fn config(name: &str) -> kvpress_models::Result<ModelConfig> {
    ModelConfig::from_hf_config_file(&fixture(name).join("config.json"))
}

/// SmolLM2-135M-Instruct, as transformers 5 writes it and as the default GGUF describes it.
fn smollm2() -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        n_layers: 30,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        sliding_window: None,
    }
}

#[test]
fn the_fixtures_were_written_by_transformers_5() {
    let text = std::fs::read_to_string(fixture("versions.json")).unwrap();
    let versions: serde_json::Value = serde_json::from_str(&text).unwrap();
    let version = versions["transformers"].as_str().unwrap();
    assert!(version.starts_with("5."), "{version}");
    let text = std::fs::read_to_string(fixture("smollm2/config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["transformers_version"], version);
    // The layout this file is about: no top-level `rope_theta`, the base in `rope_parameters`.
    assert!(config.get("rope_theta").is_none(), "{text}");
    assert_eq!(config["rope_parameters"]["rope_theta"], 100_000.0);
}

#[test]
fn smollm2_config_reads_theta_from_rope_parameters() {
    assert_eq!(config("smollm2").unwrap(), smollm2());
}

#[test]
fn a_transformers_4_config_and_its_transformers_5_resave_read_the_same() {
    let v4 = ModelConfig::from_hf_config_file(&fixture("from-transformers4/transformers4.json"));
    assert_eq!(v4.unwrap(), smollm2());
    assert_eq!(config("from-transformers4").unwrap(), smollm2());
}

#[test]
fn qwen2_config_with_a_disabled_window() {
    let c = config("qwen2").unwrap();
    assert_eq!(c.architecture, Architecture::Qwen2);
    assert_eq!(c.rope_theta, 1_000_000.0);
    let heads = (c.n_heads, c.n_kv_heads, c.head_dim, c.n_layers);
    assert_eq!(heads, (14, 2, 64, 24));
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.intermediate_size),
        (151936, 896, 4864)
    );
    assert_eq!((c.rms_norm_eps, c.max_position_embeddings), (1e-6, 32768));
    assert!(c.tie_word_embeddings);
    assert_eq!(c.sliding_window, None);
}

#[test]
fn qwen2_windows_count_only_on_sliding_layers() {
    assert_eq!(config("qwen2-sliding").unwrap().sliding_window, Some(512));
    assert_eq!(config("qwen2-sliding-unused").unwrap().sliding_window, None);
    let theta = config("qwen2-sliding-unused").unwrap().rope_theta;
    assert_eq!(theta, 10_000.0, "no RoPE entries: transformers' default");
}

#[test]
fn qwen3_config_has_its_own_head_dim() {
    let c = config("qwen3").unwrap();
    assert_eq!(c.architecture, Architecture::Qwen3);
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (16, 8, 128));
    assert_eq!(
        (c.rope_theta, c.max_position_embeddings),
        (1_000_000.0, 40960)
    );
    assert!(c.tie_word_embeddings);
    assert_eq!(c.sliding_window, None);
}

#[test]
fn mistral_config_keeps_its_window() {
    let c = config("mistral").unwrap();
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (32, 8, 128));
    assert_eq!((c.rope_theta, c.rms_norm_eps), (10_000.0, 1e-5));
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.sliding_window, Some(4096));
}

#[test]
fn scaled_rope_in_rope_parameters_is_refused() {
    for (name, kind) in [
        ("linear-scaling", "`linear`"),
        ("llama3-scaling", "`llama3`"),
    ] {
        let err = config(name).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("default"), "{text}");
        match err {
            Error::UnsupportedConfig { key, value, .. } => {
                assert_eq!(
                    (key.as_str(), value.as_str()),
                    ("rope_parameters.rope_type", kind)
                );
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

/// A folder with the weights of a tiny model and the `config.json` of transformers 5.
fn tiny_folder_with_v5_config(rope_parameters: serde_json::Value) -> tempfile::TempDir {
    let tiny = Spec::new(Arch::Llama).build();
    let dir = tiny.hf_folder(1);
    let mut json = tiny.hf_config();
    let object = json.as_object_mut().unwrap();
    object.remove("rope_theta");
    object.remove("torch_dtype");
    object.insert("dtype".into(), "float32".into());
    object.insert("rope_parameters".into(), rope_parameters);
    std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
    dir
}

#[test]
fn load_model_reads_rope_parameters_and_refuses_scaling_before_the_weights() {
    let params = serde_json::json!({"rope_type": "default", "rope_theta": 50000.0});
    let dir = tiny_folder_with_v5_config(params);
    let loaded = load_model(dir.path(), None, &Device::Cpu).unwrap();
    assert_eq!(loaded.model.config().rope_theta, 50_000.0);
    let dir = tiny_folder_with_v5_config(
        serde_json::json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 1e5}),
    );
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load_model(dir.path(), None, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedConfig { key, .. } if key == "rope_parameters.rope_type"),
        "{err:?}"
    );
}

/// One conversation of `expected.json` and what transformers rendered for it.
#[derive(Deserialize)]
struct Case {
    messages: Vec<Message>,
    add_generation_prompt: bool,
    rendered: String,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

fn cases(folder: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(folder.join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The template read from `folder` renders every case as transformers did.
fn check_renders_like_transformers(folder: &Path, expected_source: &Path) {
    let template = chat_template_from_folder(folder)
        .unwrap()
        .expect("the folder has a chat template");
    let source = std::fs::read_to_string(expected_source).unwrap();
    assert_eq!(template.source(), source, "{}", folder.display());
    let all = cases(folder);
    assert!(!all.is_empty());
    for case in all {
        let messages: Vec<ChatMessage> = case
            .messages
            .into_iter()
            .map(|m| ChatMessage {
                role: m.role,
                content: m.content,
            })
            .collect();
        let rendered = template
            .render(&messages, case.add_generation_prompt)
            .unwrap();
        assert_eq!(rendered, case.rendered, "{}", folder.display());
    }
}

#[test]
fn chat_template_jinja_is_read_and_renders_like_transformers() {
    let folder = fixture("tokenizer");
    assert!(
        !std::fs::read_to_string(folder.join("tokenizer_config.json"))
            .unwrap()
            .contains("chat_template")
    );
    check_renders_like_transformers(&folder, &folder.join("chat_template.jinja"));
}

#[test]
fn chat_template_jinja_wins_over_tokenizer_config_json() {
    let folder = fixture("tokenizer-both");
    let config = std::fs::read_to_string(folder.join("tokenizer_config.json")).unwrap();
    assert!(config.contains("\"chat_template\""), "the fixture has both");
    // This template uses `bos_token`/`eos_token` and newlines after block tags, which
    // transformers drops (trim_blocks).
    check_renders_like_transformers(&folder, &folder.join("chat_template.jinja"));
}

#[test]
fn chat_template_in_tokenizer_config_json_still_works() {
    let folder = fixture("tokenizer-legacy");
    assert!(!folder.join("chat_template.jinja").exists());
    let template = chat_template_from_folder(&folder).unwrap().unwrap();
    let tokenizer = fixture("tokenizer");
    assert_eq!(
        template.source(),
        std::fs::read_to_string(tokenizer.join("chat_template.jinja")).unwrap()
    );
    check_renders_like_transformers(&folder, &tokenizer.join("chat_template.jinja"));
}

#[test]
fn named_templates_use_the_default_one() {
    let folder = fixture("tokenizer-named");
    assert!(folder
        .join("additional_chat_templates/tool_use.jinja")
        .exists());
    check_renders_like_transformers(&folder, &folder.join("chat_template.jinja"));
}

#[test]
fn named_templates_without_a_default_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("additional_chat_templates");
    std::fs::create_dir(&extra).unwrap();
    std::fs::write(extra.join("tool_use.jinja"), "{{ messages }}").unwrap();
    // Even with a template in tokenizer_config.json: transformers would not use it either.
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": "x"}"#,
    )
    .unwrap();
    match chat_template_from_folder(dir.path()) {
        Err(Error::ChatTemplate(message)) => {
            assert!(
                message.contains("tool_use") && message.contains("chat_template.jinja"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    // No template anywhere: none.
    let empty = tempfile::tempdir().unwrap();
    assert!(chat_template_from_folder(empty.path()).unwrap().is_none());
}

#[test]
fn the_transformers_5_tokenizer_json_loads() {
    let path = fixture("tokenizer/tokenizer.json");
    let tokenizer = TextTokenizer::from_file(&path, None, vec![]).unwrap();
    let ids = tokenizer
        .encode("<|im_start|>user\nRome<|im_end|>", false)
        .unwrap();
    assert_eq!(
        ids[0],
        tokenizer.inner().token_to_id("<|im_start|>").unwrap()
    );
    assert_eq!(
        *ids.last().unwrap(),
        tokenizer.inner().token_to_id("<|im_end|>").unwrap()
    );
    assert_eq!(
        tokenizer.decode(&ids, false).unwrap(),
        "<|im_start|>user\nRome<|im_end|>"
    );
}

#[test]
fn load_model_takes_the_template_from_chat_template_jinja() {
    let dir = tiny_folder_with_v5_config(serde_json::json!({"rope_theta": 1e4}));
    let both = fixture("tokenizer-both");
    for file in ["chat_template.jinja", "tokenizer_config.json"] {
        std::fs::copy(both.join(file), dir.path().join(file)).unwrap();
    }
    let loaded = load_model(dir.path(), None, &Device::Cpu).unwrap();
    let template = loaded.chat_template.expect("a template");
    let case = &cases(&both)[0];
    let messages = [ChatMessage::user(case.messages[0].content.clone())];
    assert_eq!(template.render(&messages, true).unwrap(), case.rendered);
}

/// The default model's weights and tokenizer in a folder with the `config.json` transformers 5
/// writes for SmolLM2-135M-Instruct: same config (RoPE base 100000) and same logits as the
/// GGUF file, and the logits change when the base is not read (the bug this guards against).
#[test]
fn default_model_as_a_transformers_5_folder_equals_the_gguf() {
    let gguf_path = default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    write_hf_weights_from_gguf(&gguf_path, dir.path());
    std::fs::copy(
        fixture("smollm2/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let gguf = load_model(&gguf_path, Some(F32), &Device::Cpu).unwrap();
    let prompt = "The quick brown fox jumps over the lazy dog, and then it runs far away into \
                  the forest where nobody can find it again until the next morning.";
    let ids = gguf.tokenizer.encode(prompt, false).unwrap();
    assert!(ids.len() > 20, "{}", ids.len());
    let expected = last_logits(&gguf.model, &ids);
    let gguf_config = gguf.model.config().clone();
    drop(gguf);
    // GGUF stores the epsilon as an f32 (the same f32 as 1e-5, so the logits are identical).
    assert_eq!(gguf_config.rms_norm_eps as f32, 1e-5_f32);
    let gguf_config = ModelConfig {
        rms_norm_eps: 1e-5,
        ..gguf_config
    };
    assert_eq!(
        gguf_config,
        smollm2(),
        "the fixture matches the default model"
    );

    let folder = load_model(dir.path(), None, &Device::Cpu).unwrap();
    assert_eq!(folder.model.config(), &gguf_config);
    assert_eq!(folder.tokenizer.encode(prompt, false).unwrap(), ids);
    let diff = max_abs_diff(&last_logits(&folder.model, &ids), &expected);
    assert!(
        diff < 1e-5,
        "transformers-5 folder vs GGUF: logits differ by {diff}"
    );
    drop(folder);

    // Without `rope_parameters` the base falls back to 10000, and the logits move.
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    json.as_object_mut().unwrap().remove("rope_parameters");
    std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
    let wrong = load_model(dir.path(), None, &Device::Cpu).unwrap();
    assert_eq!(wrong.model.config().rope_theta, 10_000.0);
    let moved = max_abs_diff(&last_logits(&wrong.model, &ids), &expected);
    assert!(
        moved > 0.1,
        "theta 10000 vs 100000 moved the logits by only {moved}"
    );
}
