//! Unit tests of `config.json` reading (hand-written entries; the files transformers 5 writes
//! are checked in `tests/transformers5.rs`).

use super::*;

const BASE: &str = r#""model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,
    "num_hidden_layers":1,"num_attention_heads":2,"rms_norm_eps":1e-5,"max_position_embeddings":64"#;

fn parse(extra: &str) -> Result<ModelConfig> {
    let text = if extra.is_empty() {
        format!("{{{BASE}}}")
    } else {
        format!("{{{BASE},{extra}}}")
    };
    let hf: HfConfig = serde_json::from_str(&text).unwrap();
    hf.to_model_config()
}

/// `BASE` as `model_type`, with as many KV heads as query heads (Qwen and Mistral would
/// otherwise take their class defaults, 32 and 8).
fn with_type(model_type: &str, extra: &str) -> Result<ModelConfig> {
    let base = BASE.replace("\"llama\"", &format!("\"{model_type}\""));
    let text = format!(
        "{{{base},\"num_key_value_heads\":2{}{extra}}}",
        if extra.is_empty() { "" } else { "," }
    );
    serde_json::from_str::<HfConfig>(&text)
        .unwrap()
        .to_model_config()
}

fn unsupported_key(result: Result<ModelConfig>) -> (String, String) {
    match result {
        Err(Error::UnsupportedConfig { key, value, .. }) => (key, value),
        other => panic!("expected UnsupportedConfig, got {other:?}"),
    }
}

fn invalid_key(result: Result<ModelConfig>) -> String {
    match result {
        Err(Error::InvalidConfig { key, .. }) => key,
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn inconsistent_heads_are_rejected() {
    let hf: HfConfig = serde_json::from_str(
        r#"{"model_type":"llama","vocab_size":10,"hidden_size":12,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2,
            "rms_norm_eps":1e-5,"max_position_embeddings":64}"#,
    )
    .unwrap();
    assert_eq!(invalid_key(hf.to_model_config()), "num_key_value_heads");
}

#[test]
fn rope_theta_is_read_from_either_layout() {
    assert_eq!(parse("").unwrap().rope_theta, 10_000.0);
    assert_eq!(parse(r#""rope_theta":5e5"#).unwrap().rope_theta, 500_000.0);
    let v5 = parse(r#""rope_parameters":{"rope_type":"default","rope_theta":100000.0}"#);
    assert_eq!(v5.unwrap().rope_theta, 100_000.0);
    // transformers 4 with a null scaling, and transformers 5 with no theta inside.
    let v4 = parse(r#""rope_theta":1e6,"rope_scaling":null"#).unwrap();
    assert_eq!(v4.rope_theta, 1_000_000.0);
    let outer = parse(r#""rope_theta":1e6,"rope_parameters":{"rope_type":"default"}"#);
    assert_eq!(outer.unwrap().rope_theta, 1_000_000.0);
    // Equal values in both places are fine; an empty object is no parameters.
    let both = parse(r#""rope_theta":1e5,"rope_parameters":{"rope_theta":100000}"#);
    assert_eq!(both.unwrap().rope_theta, 100_000.0);
    assert_eq!(parse(r#""rope_scaling":{}"#).unwrap().rope_theta, 10_000.0);
}

#[test]
fn differing_thetas_are_refused_naming_both() {
    let err = parse(r#""rope_theta":10000,"rope_parameters":{"rope_theta":100000}"#).unwrap_err();
    match &err {
        Error::ConflictingConfig { first, second, .. } => {
            assert_eq!(
                (first.as_str(), second.as_str()),
                ("rope_theta", "rope_parameters.rope_theta")
            );
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("10000") && text.contains("100000"), "{text}");
}

#[test]
fn scaled_rope_is_refused_in_every_layout() {
    let cases = [
        (
            r#""rope_scaling":{"rope_type":"llama3","factor":8.0}"#,
            "rope_scaling.rope_type",
            "`llama3`",
        ),
        (
            r#""rope_scaling":{"type":"dynamic","factor":2.0}"#,
            "rope_scaling.type",
            "`dynamic`",
        ),
        (
            r#""rope_parameters":{"rope_type":"linear","factor":2.0}"#,
            "rope_parameters.rope_type",
            "`linear`",
        ),
        (
            r#""rope_parameters":{"type":"yarn","factor":4.0}"#,
            "rope_parameters.type",
            "`yarn`",
        ),
    ];
    for (extra, key, value) in cases {
        let err = parse(extra).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("default") && text.contains(key), "{text}");
        assert_eq!(
            unsupported_key(Err(err)),
            (key.to_string(), value.to_string())
        );
    }
    // `rope_type` wins over `type`, as in transformers.
    assert!(parse(r#""rope_parameters":{"rope_type":"default","type":"linear"}"#).is_ok());
    let err = parse(r#""rope_parameters":{"rope_type":"linear","type":"default"}"#);
    assert_eq!(unsupported_key(err).0, "rope_parameters.rope_type");
}

#[test]
fn odd_rope_entries_are_refused() {
    let partial = parse(r#""rope_parameters":{"rope_theta":1e4,"partial_rotary_factor":0.5}"#);
    assert_eq!(
        unsupported_key(partial).0,
        "rope_parameters.partial_rotary_factor"
    );
    assert_eq!(
        unsupported_key(parse(r#""partial_rotary_factor":0.25"#)).0,
        "partial_rotary_factor"
    );
    assert!(parse(r#""partial_rotary_factor":1.0"#).is_ok());
    let nested = parse(r#""rope_parameters":{"full_attention":{"rope_theta":1e4}}"#);
    assert_eq!(unsupported_key(nested).0, "rope_parameters.full_attention");
    assert_eq!(invalid_key(parse(r#""rope_theta":null"#)), "rope_theta");
    assert_eq!(invalid_key(parse(r#""rope_theta":-1"#)), "rope_theta");
    assert_eq!(
        invalid_key(parse(r#""rope_parameters":{"rope_theta":"big"}"#)),
        "rope_parameters.rope_theta"
    );
    assert_eq!(
        invalid_key(parse(r#""rope_parameters":5"#)),
        "rope_parameters"
    );
    assert_eq!(
        invalid_key(parse(r#""rope_parameters":{"rope_type":null}"#)),
        "rope_parameters.rope_type"
    );
    let both =
        parse(r#""rope_scaling":{"type":"linear"},"rope_parameters":{"rope_type":"default"}"#);
    assert!(
        matches!(both, Err(Error::ConflictingConfig { .. })),
        "{both:?}"
    );
}

#[test]
fn computation_changing_entries_are_refused() {
    assert_eq!(
        unsupported_key(parse(r#""hidden_act":"gelu""#)).0,
        "hidden_act"
    );
    assert!(parse(r#""hidden_act":"silu""#).is_ok() && parse(r#""hidden_act":"swish""#).is_ok());
    assert_eq!(
        unsupported_key(parse(r#""attention_bias":true"#)).0,
        "attention_bias"
    );
    assert_eq!(
        unsupported_key(with_type("qwen3", r#""attention_bias":true,"head_dim":4"#)).0,
        "attention_bias"
    );
    // Qwen2 always has q/k/v biases and Mistral none: transformers ignores the entry for them.
    assert!(with_type("qwen2", r#""attention_bias":true"#).is_ok());
    assert!(with_type("mistral", r#""attention_bias":true"#).is_ok());
    assert_eq!(unsupported_key(parse(r#""mlp_bias":true"#)).0, "mlp_bias");
    assert!(parse(r#""attention_bias":false,"mlp_bias":false"#).is_ok());
    let quantized = parse(r#""quantization_config":{"quant_method":"gptq","bits":4}"#);
    assert_eq!(
        unsupported_key(quantized),
        (
            "quantization_config.quant_method".to_string(),
            "\"gptq\"".to_string()
        )
    );
}

#[test]
fn absent_entries_take_the_transformers_class_defaults() {
    let llama = parse("").unwrap();
    assert_eq!(
        (llama.n_kv_heads, llama.head_dim, llama.sliding_window),
        (2, 4, None)
    );
    assert!(!llama.tie_word_embeddings);
    let no_eps = BASE.replace(r#""rms_norm_eps":1e-5,"#, "");
    let hf: HfConfig = serde_json::from_str(&format!("{{{no_eps}}}")).unwrap();
    assert_eq!(hf.to_model_config().unwrap().rms_norm_eps, 1e-6);
    // Qwen3: head_dim 128; Qwen2/Qwen3: 32 KV heads; Mistral: 8 KV heads, window 4096.
    let heads = |model_type: &str, n: usize| {
        let text = BASE
            .replace("\"llama\"", &format!("\"{model_type}\""))
            .replace(
                r#""num_attention_heads":2"#,
                &format!(r#""num_attention_heads":{n}"#),
            )
            .replace(r#""hidden_size":8"#, &format!(r#""hidden_size":{}"#, 4 * n));
        let hf: HfConfig = serde_json::from_str(&format!("{{{text}}}")).unwrap();
        hf.to_model_config().unwrap()
    };
    let qwen3 = heads("qwen3", 32);
    assert_eq!((qwen3.head_dim, qwen3.n_kv_heads), (128, 32));
    assert_eq!(heads("qwen2", 32).n_kv_heads, 32);
    let mistral = heads("mistral", 8);
    assert_eq!(
        (mistral.n_kv_heads, mistral.sliding_window),
        (8, Some(4096))
    );
    // `null` means "as many as the query heads" / "hidden / heads".
    let nulls = parse(r#""num_key_value_heads":null,"head_dim":null"#).unwrap();
    assert_eq!((nulls.n_kv_heads, nulls.head_dim), (2, 4));
    assert_eq!(
        invalid_key(with_type("qwen2", r#""head_dim":null"#)),
        "head_dim"
    );
    let uneven = BASE.replace(r#""num_attention_heads":2"#, r#""num_attention_heads":3"#);
    let hf: HfConfig =
        serde_json::from_str(&format!("{{{uneven},\"num_key_value_heads\":1}}")).unwrap();
    assert_eq!(invalid_key(hf.to_model_config()), "head_dim");
}

#[test]
fn sliding_windows_follow_transformers() {
    // Llama: read unless disabled (stricter than transformers, never wrong).
    assert_eq!(
        parse(r#""sliding_window":16"#).unwrap().sliding_window,
        Some(16)
    );
    let off = parse(r#""sliding_window":16,"use_sliding_window":false"#).unwrap();
    assert_eq!(off.sliding_window, None);
    // Mistral: `use_sliding_window` is not a Mistral entry; the window always applies.
    let mistral = with_type(
        "mistral",
        r#""sliding_window":16,"use_sliding_window":false"#,
    );
    assert_eq!(mistral.unwrap().sliding_window, Some(16));
    assert_eq!(
        with_type("mistral", r#""sliding_window":null"#)
            .unwrap()
            .sliding_window,
        None
    );
    // Qwen: only when enabled, and only if some layer slides.
    let qwen = |extra: &str| with_type("qwen2", extra).unwrap().sliding_window;
    assert_eq!(qwen(r#""sliding_window":16"#), None);
    assert_eq!(
        qwen(r#""sliding_window":16,"use_sliding_window":true"#),
        None,
        "layer 0 < 28"
    );
    let from = r#""sliding_window":16,"use_sliding_window":true,"max_window_layers":0"#;
    assert_eq!(qwen(from), Some(16));
    let typed =
        r#""sliding_window":16,"use_sliding_window":true,"layer_types":["sliding_attention"]"#;
    assert_eq!(qwen(typed), Some(16));
    let full = r#""sliding_window":16,"use_sliding_window":true,"layer_types":["full_attention"]"#;
    assert_eq!(qwen(full), None);
    let disabled = r#""sliding_window":16,"layer_types":["sliding_attention"]"#;
    assert_eq!(qwen(disabled), None, "use_sliding_window defaults to false");
    let chunked = with_type("qwen2", r#""layer_types":["chunked_attention"]"#);
    assert_eq!(unsupported_key(chunked).0, "layer_types[0]");
    let short = with_type("qwen2", r#""layer_types":[]"#);
    assert_eq!(invalid_key(short), "layer_types");
    assert_eq!(
        invalid_key(parse(r#""sliding_window":0"#)),
        "sliding_window"
    );
}
