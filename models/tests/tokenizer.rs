//! Tokenizers built from GGUF metadata (byte-level BPE) and from tokenizer.json, and chat
//! templates from GGUF metadata and tokenizer_config.json.

mod common;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use common::*;
use kvpress_models::{ChatMessage, Error, GgufFile, StreamDecoder, TextTokenizer};

fn tokenizer_gguf() -> GgufBuilder {
    GgufBuilder {
        metadata: tokenizer_metadata(),
        tensors: Vec::new(),
    }
}

fn gguf_tokenizer(builder: &GgufBuilder) -> kvpress_models::Result<TextTokenizer> {
    let file: GgufFile = builder.open()?;
    TextTokenizer::from_gguf(&file)
}

#[test]
fn special_tokens_map_to_their_ids_and_merges_apply() {
    let tok = gguf_tokenizer(&tokenizer_gguf()).unwrap();
    assert_eq!(
        tok.encode("<|im_start|>", false).unwrap(),
        vec![IM_START_ID]
    );
    assert_eq!(
        tok.encode("hello", false).unwrap(),
        vec![HELLO_ID],
        "merges h e, l l, ll o, he llo"
    );
    assert_eq!(
        tok.encode("<|im_start|>hello world<|im_end|>", false)
            .unwrap(),
        vec![
            IM_START_ID,
            HELLO_ID,
            SPACE_W_ID,
            letter_id('o'),
            letter_id('r'),
            letter_id('l'),
            letter_id('d'),
            EOS_ID
        ]
    );
    // No prefix space is added (tokenizer.ggml.add_space_prefix = false).
    assert_eq!(tok.encode("world", false).unwrap()[0], letter_id('w'));
    assert_eq!(tok.eos_ids(), &[EOS_ID]);
}

#[test]
fn decode_round_trips() {
    let tok = gguf_tokenizer(&tokenizer_gguf()).unwrap();
    for text in [
        "hello world",
        "<|im_start|>user\nhello, world!<|im_end|>\n<|im_start|>assistant\n",
        "a.b,c: d!",
        "  spaced  out  ",
    ] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{ids:?}");
    }
    let ids = tok.encode("<|im_start|>hello<|im_end|>", false).unwrap();
    assert_eq!(
        tok.decode(&ids, true).unwrap(),
        "hello",
        "special tokens are skipped on request"
    );
}

#[test]
fn bos_is_prepended_only_when_the_gguf_asks_for_it() {
    let tok = gguf_tokenizer(&tokenizer_gguf()).unwrap();
    assert_eq!(tok.encode("hello", true).unwrap(), vec![HELLO_ID]);
    let with_bos = tokenizer_gguf().set("tokenizer.ggml.add_bos_token", Value::Bool(true));
    let tok = gguf_tokenizer(&with_bos).unwrap();
    assert_eq!(tok.encode("hello", true).unwrap(), vec![BOS_ID, HELLO_ID]);
    assert_eq!(tok.encode("hello", false).unwrap(), vec![HELLO_ID]);
}

#[test]
fn qwen2_and_llama3_pre_tokenizers_give_the_same_ids_on_simple_text() {
    let reference = gguf_tokenizer(&tokenizer_gguf()).unwrap();
    for pre in ["qwen2", "llama-bpe", "smaug-bpe", "something-else"] {
        let tok =
            gguf_tokenizer(&tokenizer_gguf().set("tokenizer.ggml.pre", Value::String(pre.into())))
                .unwrap();
        for text in ["hello world", "<|im_start|>user\nhello<|im_end|>"] {
            assert_eq!(
                tok.encode(text, false).unwrap(),
                reference.encode(text, false).unwrap(),
                "{pre}"
            );
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), text, "{pre}");
        }
    }
}

#[test]
fn stream_decoder_yields_the_text_piece_by_piece() {
    let tok = gguf_tokenizer(&tokenizer_gguf()).unwrap();
    let text = "hello world, hello!";
    let ids = tok.encode(text, false).unwrap();
    let mut stream = StreamDecoder::default();
    let mut out = String::new();
    for &id in &ids {
        if let Some(piece) = stream.push(&tok, id).unwrap() {
            out.push_str(&piece);
        }
    }
    assert_eq!(out, text);
}

#[test]
fn non_bpe_tokenizer_models_are_a_clear_tokenizer_error() {
    let llama = tokenizer_gguf().set("tokenizer.ggml.model", Value::String("llama".into()));
    let err = gguf_tokenizer(&llama).unwrap_err();
    assert!(matches!(err, Error::Tokenizer(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("`llama`") && message.contains("gpt2"),
        "{message}"
    );
    assert!(
        message.contains("tokenizer.json"),
        "suggests the alternative: {message}"
    );

    // The same error through the model loader.
    let model = Spec::new(Arch::Llama)
        .build()
        .gguf(GgmlDType::F32)
        .set("tokenizer.ggml.model", Value::String("llama".into()));
    let err = model.load(F32).unwrap_err();
    assert!(matches!(err, Error::Tokenizer(_)), "{err:?}");

    let absent = tokenizer_gguf().remove_key("tokenizer.ggml.model");
    let err = gguf_tokenizer(&absent).unwrap_err();
    assert!(err.to_string().contains("<absent>"), "{err}");
}

#[test]
fn malformed_tokenizer_metadata_is_named() {
    let err = gguf_tokenizer(&tokenizer_gguf().remove_key("tokenizer.ggml.tokens")).unwrap_err();
    assert!(
        matches!(err, Error::Tokenizer(_)) && err.to_string().contains("tokenizer.ggml.tokens"),
        "{err}"
    );

    let bad_merge = tokenizer_gguf().set(
        "tokenizer.ggml.merges",
        Value::Array(vec![Value::String("hello".into())]),
    );
    let err = gguf_tokenizer(&bad_merge).unwrap_err();
    assert!(err.to_string().contains("malformed merge `hello`"), "{err}");

    let not_strings =
        tokenizer_gguf().set("tokenizer.ggml.tokens", Value::Array(vec![Value::U32(1)]));
    let err = gguf_tokenizer(&not_strings).unwrap_err();
    assert!(err.to_string().contains("non-string"), "{err}");

    let not_array = tokenizer_gguf().set("tokenizer.ggml.merges", Value::String("h e".into()));
    let err = gguf_tokenizer(&not_array).unwrap_err();
    assert!(err.to_string().contains("not an array"), "{err}");

    // A merge whose result is not in the vocabulary.
    let unknown = tokenizer_gguf().set(
        "tokenizer.ggml.merges",
        Value::Array(vec![Value::String("x y".into())]),
    );
    let err = gguf_tokenizer(&unknown).unwrap_err();
    assert!(matches!(err, Error::Tokenizer(_)), "{err:?}");
}

#[test]
fn loaded_models_carry_tokenizers_that_agree_between_gguf_and_folder() {
    let tiny = Spec::new(Arch::Qwen2).build();
    let gguf = tiny.gguf(GgmlDType::F32).load(F32).unwrap();
    let folder = tiny.hf_folder(1);
    let hf = kvpress_models::load_model(folder.path(), None, &Device::Cpu).unwrap();
    let text = "<|im_start|>user\nhello world<|im_end|>\n";
    let a = gguf.tokenizer.encode(text, false).unwrap();
    let b = hf.tokenizer.encode(text, false).unwrap();
    assert_eq!(a, b);
    assert_eq!(hf.tokenizer.decode(&b, false).unwrap(), text);
    assert_eq!(gguf.tokenizer.eos_ids(), &[EOS_ID]);
    assert_eq!(hf.tokenizer.eos_ids(), &[EOS_ID], "eos from config.json");
}

#[test]
fn generation_config_json_overrides_eos_ids() {
    let tiny = Spec::new(Arch::Llama).build();
    let dir = tiny.hf_folder(1);
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": [2, 0]}"#,
    )
    .unwrap();
    let loaded = kvpress_models::load_model(dir.path(), None, &Device::Cpu).unwrap();
    assert_eq!(loaded.tokenizer.eos_ids(), &[2, 0]);
}

#[test]
fn chat_template_from_gguf_renders_with_generation_prompt() {
    let loaded = Spec::new(Arch::Qwen3)
        .build()
        .gguf(GgmlDType::F32)
        .load(F32)
        .unwrap();
    let template = loaded
        .chat_template
        .expect("tokenizer.chat_template is set");
    assert_eq!(template.source(), CHATML);
    let messages = [ChatMessage::user("hello world")];
    let with = template.render(&messages, true).unwrap();
    assert_eq!(
        with,
        "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    );
    let without = template.render(&messages, false).unwrap();
    assert_eq!(without, "<|im_start|>user\nhello world<|im_end|>\n");
    // The rendered prompt tokenizes with the special tokens as single ids.
    let ids = loaded.tokenizer.encode(&with, false).unwrap();
    assert_eq!(ids[0], IM_START_ID);
    assert_eq!(ids.iter().filter(|&&i| i == IM_START_ID).count(), 2);
    assert_eq!(ids.iter().filter(|&&i| i == EOS_ID).count(), 1);
    assert_eq!(
        *ids.last().unwrap(),
        NEWLINE_ID,
        "ends with the assistant header's newline"
    );
}

#[test]
fn chat_template_sees_bos_and_eos_text_from_the_gguf() {
    let template =
        "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}";
    let loaded = Spec::new(Arch::Llama)
        .build()
        .gguf(GgmlDType::F32)
        .set("tokenizer.chat_template", Value::String(template.into()))
        .load(F32)
        .unwrap();
    let text = loaded
        .chat_template
        .unwrap()
        .render(&[ChatMessage::user("hi")], false)
        .unwrap();
    assert_eq!(text, "<|endoftext|>hi<|im_end|>");
}

#[test]
fn no_chat_template_means_none() {
    let loaded = Spec::new(Arch::Llama)
        .build()
        .gguf(GgmlDType::F32)
        .remove_key("tokenizer.chat_template")
        .load(F32)
        .unwrap();
    assert!(loaded.chat_template.is_none());
    let hf = kvpress_models::load_model(
        Spec::new(Arch::Llama).build().hf_folder(1).path(),
        None,
        &Device::Cpu,
    )
    .unwrap();
    assert!(hf.chat_template.is_none(), "no tokenizer_config.json");
}

#[test]
fn chat_template_from_tokenizer_config_json() {
    let tiny = Spec::new(Arch::Qwen2).build();
    let dir = tiny.hf_folder(1);
    let config = serde_json::json!({
        "chat_template": format!("{{{{ bos_token }}}}{CHATML}"),
        "bos_token": {"content": "<|endoftext|>", "lstrip": false},
        "eos_token": "<|im_end|>",
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let loaded = kvpress_models::load_model(dir.path(), None, &Device::Cpu).unwrap();
    let text = loaded
        .chat_template
        .expect("tokenizer_config.json has a template")
        .render(&[ChatMessage::user("hello")], true)
        .unwrap();
    assert_eq!(
        text,
        "<|endoftext|><|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    );

    // A list of named templates: the `default` one is used.
    let config = serde_json::json!({
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "default:{{ messages[0].content }}"},
        ],
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let loaded = kvpress_models::load_model(dir.path(), None, &Device::Cpu).unwrap();
    let text = loaded
        .chat_template
        .unwrap()
        .render(&[ChatMessage::user("x")], false)
        .unwrap();
    assert_eq!(text, "default:x");

    // Without a `default` entry it is an error that says so.
    let config = serde_json::json!({"chat_template": [{"name": "tool_use", "template": "tools"}]});
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let err = kvpress_models::load_model(dir.path(), None, &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, Error::ChatTemplate(_)) && err.to_string().contains("default"),
        "{err}"
    );
}
