//! The tiny models' byte-level BPE vocabulary, chat template and a valid prompt.

use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use kvpress_models::GgufFile;

use super::GgufBuilder;

/// Byte-level BPE vocabulary of the tiny models (40 tokens, = the model's vocab size).
pub const TOKENS: [&str; 40] = [
    "<|endoftext|>", // 0: bos, control
    "<|im_start|>",  // 1: control
    "<|im_end|>",    // 2: eos, control
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "h",
    "i",
    "j",
    "k",
    "l",
    "m",
    "n",
    "o",
    "p",
    "q",
    "r",
    "s",
    "t",
    "u",
    "v",
    "w",
    "x",
    "y",
    "z",     // 3..=28
    "Ġ",     // 29: byte-level space
    "Ċ",     // 30: byte-level newline
    "he",    // 31
    "ll",    // 32
    "llo",   // 33
    "hello", // 34
    "Ġw",    // 35
    ":",     // 36
    "!",     // 37
    ".",     // 38
    ",",     // 39
];
pub const BOS_ID: u32 = 0;
pub const IM_START_ID: u32 = 1;
pub const EOS_ID: u32 = 2;
pub const HELLO_ID: u32 = 34;
pub const SPACE_W_ID: u32 = 35;
pub const NEWLINE_ID: u32 = 30;
pub const MERGES: [&str; 5] = ["h e", "l l", "ll o", "he llo", "Ġ w"];

/// Id of a single lowercase letter.
pub fn letter_id(c: char) -> u32 {
    assert!(c.is_ascii_lowercase());
    3 + (c as u32 - 'a' as u32)
}

/// ChatML, as Qwen and SmolLM2 ship it (without a default system message).
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A prompt of ten valid token ids.
pub const PROMPT: [u32; 10] = [1, 5, 9, 13, 31, 34, 29, 17, 22, 38];

/// `tokenizer.ggml.*` metadata of the tiny byte-level BPE vocabulary.
pub fn tokenizer_metadata() -> Vec<(String, Value)> {
    let strings =
        |items: &[&str]| Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect());
    let token_types = TOKENS
        .iter()
        .map(|t| Value::I32(if t.starts_with("<|") { 3 } else { 1 }))
        .collect();
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), strings(&TOKENS)),
        ("tokenizer.ggml.merges".into(), strings(&MERGES)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(token_types),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(BOS_ID)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(EOS_ID)),
        ("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)),
    ]
}

/// Saves the tokenizer built from the GGUF metadata as a Hugging Face `tokenizer.json`.
pub fn write_tokenizer_json(path: &Path) {
    let bytes = GgufBuilder {
        metadata: tokenizer_metadata(),
        tensors: Vec::new(),
    }
    .bytes();
    let file =
        GgufFile::from_reader("tokenizer-only".into(), Box::new(Cursor::new(bytes))).unwrap();
    let tokenizer = kvpress_models::TextTokenizer::from_gguf(&file).unwrap();
    tokenizer.inner().save(path, false).unwrap();
}
