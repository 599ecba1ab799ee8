//! Saved contexts (`compress --out`, `run --load`): a damaged, cut, padded or foreign file is
//! refused naming what is wrong; the model is identified by content (a renamed copy loads, a
//! changed model does not); the KV dtype asked for is the one stored and reported.

use std::path::Path;

use crate::files::{knorm, long_ctx, text};
use crate::harness::{fails, succeeds, Case, File};

/// `run --load {dir}/c.kvp` after `compress` saved it (with `compress_extra` arguments).
fn load(extra: &[&str], phrases: &[&str], compress_extra: &[&str]) -> Case {
    let mut args = vec![
        "run",
        "--load",
        "{dir}/c.kvp",
        "--question",
        "What is the code?",
        "--max-new-tokens",
        "4",
    ];
    args.extend(extra);
    let mut compress = vec![
        "compress",
        "--context",
        "{dir}/long.txt",
        "--press",
        "{dir}/knorm.toml",
        "--out",
        "{dir}/c.kvp",
    ];
    compress.extend(compress_extra);
    fails(&args, phrases)
        .files([long_ctx(), knorm()])
        .after(&compress)
}

/// Changes the byte `from_end` bytes before the end of `path`.
fn flip_from_end(path: &Path, from_end: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() - from_end;
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[rustfmt::skip]
pub fn cases() -> Vec<Case> {
    vec![
        load(&[], &["c.kvp is damaged: the checksum of tensor", "does not match its bytes", "compress the context again"], &[]).mutate("c.kvp", |p| flip_from_end(p, 100)),
        load(&[], &["c.kvp is damaged: the checksum of tensor"], &[]).mutate("c.kvp", |p| {
            let length = std::fs::metadata(p).unwrap().len() as usize;
            flip_from_end(p, length / 2)
        }),
        load(&[], &["c.kvp is damaged: the checksum of the header does not match"], &[]).mutate("c.kvp", |p| {
            let mut bytes = std::fs::read(p).unwrap();
            // A digit of the next position (the header is JSON held in a JSON string, so its
            // quotes are escaped): still valid JSON, another value.
            let key = b"next_position\\\":";
            let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
            assert!(bytes[at].is_ascii_digit());
            bytes[at] ^= 0x01;
            std::fs::write(p, bytes).unwrap();
        }),
        load(&[], &["is not a kvpress context file, or it is truncated or damaged"], &[]).mutate("c.kvp", |p| {
            let bytes = std::fs::read(p).unwrap();
            std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap();
        }),
        load(&[], &["is not a kvpress context file, or it is truncated or damaged"], &[]).mutate("c.kvp", |p| {
            let mut bytes = std::fs::read(p).unwrap();
            bytes.extend_from_slice(b"junk");
            std::fs::write(p, bytes).unwrap();
        }),
        load(&[], &["is not a kvpress context file"], &[]).mutate("c.kvp", |p| std::fs::write(p, b"").unwrap()),
        fails(&["run", "--load", "{dir}/text.kvp", "--question", "q"], &["{dir}/text.kvp is not a kvpress context file"]).files([text("text.kvp", "The launch code is 2718.")]),
        fails(&["run", "--load", "{dir}/model.kvp", "--question", "q"], &["{dir}/model.kvp is not a kvpress context file"]).files([("model.kvp".to_string(), File::ModelCopy)]),
        // The model is identified by its content.
        load(&["--model", "{dir}/changed.gguf"], &["c.kvp was made with model", "not with changed.gguf", "compress the context again with this model"], &[]).files([("changed.gguf".to_string(), File::ModelChanged)]),
        {
            let mut case = load(&["--model", "{dir}/copy.gguf"], &[], &[]).files([("copy.gguf".to_string(), File::ModelCopy)]);
            case.expect = crate::harness::Expect::Succeeds(vec!["A: ".to_string(), "loaded {dir}/c.kvp".to_string()]);
            case
        },
        load(&["--model", "{dir}/short.gguf"], &["c.kvp was made with model"], &[]).files([("short.gguf".to_string(), File::ModelWithPositions(64))]),
        // The KV dtype: stored as asked, converted on load, refused where a layout cannot hold it.
        succeeds(&["compress", "--context", "{dir}/long.txt", "--press", "{dir}/knorm.toml", "--out", "{dir}/c.kvp", "--kv-dtype", "f16"], &["KV cache f16"]).files([long_ctx(), knorm()]).check(stores_f16),
        succeeds(&["run", "--load", "{dir}/c.kvp", "--question", "What is the code?", "--max-new-tokens", "4"], &["A: ", "stores its KV cache as f16; converted to f32", "pass --kv-dtype f16 to keep the file's dtype"]).files([long_ctx(), knorm()]).after(&["compress", "--context", "{dir}/long.txt", "--press", "{dir}/knorm.toml", "--out", "{dir}/c.kvp", "--kv-dtype", "f16"]),
        succeeds(&["run", "--load", "{dir}/c.kvp", "--kv-dtype", "f16", "--question", "What is the code?", "--max-new-tokens", "4"], &["A: ", "KV cache f16"]).files([long_ctx(), knorm()]).after(&["compress", "--context", "{dir}/long.txt", "--press", "{dir}/knorm.toml", "--out", "{dir}/c.kvp", "--kv-dtype", "f16"]),
        succeeds(&["run", "--load", "{dir}/c.kvp", "--kv-dtype", "f32", "--question", "What is the code?", "--max-new-tokens", "4"], &["A: ", "KV cache f32"]).files([long_ctx(), knorm()]).after(&["compress", "--context", "{dir}/long.txt", "--press", "{dir}/knorm.toml", "--out", "{dir}/c.kvp", "--kv-dtype", "f16"]),
        succeeds(&["run", "--load", "{dir}/c.kvp", "--kv-dtype", "f16", "--question", "What is the code?", "--max-new-tokens", "4"], &["A: ", "converted to f16", "KV cache f16"]).files([long_ctx(), text("adakv.toml", "press = \"adakv\"\n[inner]\npress = \"knorm\"\ncompression_ratio = 0.5\n")]).after(&["compress", "--context", "{dir}/long.txt", "--press", "{dir}/adakv.toml", "--out", "{dir}/c.kvp"]),
        succeeds(&["run", "--load", "{dir}/c.kvp", "--kv-dtype", "q4", "--question", "What is the code?", "--max-new-tokens", "4"], &["A: ", "converted to q4", "KV cache q4"]).files([long_ctx(), text("adakv.toml", "press = \"adakv\"\n[inner]\npress = \"knorm\"\ncompression_ratio = 0.5\n")]).after(&["compress", "--context", "{dir}/long.txt", "--press", "{dir}/adakv.toml", "--out", "{dir}/c.kvp"]),
        // Questions must fit after the saved context.
        load(&["--model", "{dir}/copy.gguf", "--question", ""], &["a question is empty"], &[]).files([("copy.gguf".to_string(), File::ModelCopy)]),
    ]
}

/// The saved file holds f16 keys and values: KnormPress at 0.5 keeps floor(n / 2) of the n
/// context tokens, each 30 layers x 2 (K, V) x 3 KV heads x 64 dims x 2 bytes; the file is
/// those bytes plus the f32 logits of the last token and a header.
fn stores_f16(dir: &Path, output: &str) -> Result<(), String> {
    let size = std::fs::metadata(dir.join("c.kvp"))
        .map_err(|e| e.to_string())?
        .len() as usize;
    let n_context: usize = output
        .split(" context tokens")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .ok_or("no context token count")?;
    let kv_bytes = n_context / 2 * 30 * 2 * 3 * 64 * 2;
    let payload = kv_bytes + 49_152 * 4;
    match (payload..payload + 64 * 1024).contains(&size) {
        true => Ok(()),
        false => Err(format!("file of {size} bytes, expected {payload} + a header (f16 cache of {n_context} tokens at 0.5)")),
    }
}
