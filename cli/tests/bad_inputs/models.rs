//! `--model`, `--dtype` and `--kv-dtype`: files that are not models, damaged models, folders
//! missing files, unknown dtypes, and combinations a cache cannot hold are refused naming the
//! path or value; valid narrower caches really store their dtype.

use crate::files::{ctx, long_ctx, text};
use crate::harness::{fails, succeeds, Case, File};

fn model(name: &str, file: File) -> (String, File) {
    (name.to_string(), file)
}

/// `generate --prompt hi` with `extra` arguments.
fn generate(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["generate", "--prompt", "hi", "--max-new-tokens", "2"]
        .map(String::from)
        .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[rustfmt::skip]
pub fn cases() -> Vec<Case> {
    let adakv = "press = \"adakv\"\n[inner]\npress = \"snapkv\"\ncompression_ratio = 0.5\n";
    vec![
        fails(&generate(&["--model", "{dir}/text.gguf"]), &["{dir}/text.gguf", "not a readable GGUF file (unknown magic"]).files([text("text.gguf", "hello")]),
        fails(&generate(&["--model", "{dir}/ctx.txt"]), &["{dir}/ctx.txt", "not a readable GGUF file"]).files([ctx()]),
        fails(&generate(&["--model", "{dir}/head.gguf"]), &["{dir}/head.gguf", "header declares", "only"]).files([model("head.gguf", File::ModelTruncated(1000))]),
        fails(&generate(&["--model", "{dir}/cut.gguf"]), &["cannot read tensor", "truncated or corrupt file?"]).files([model("cut.gguf", File::ModelTruncated(5_000_000))]),
        fails(&generate(&["--model", "{dir}/empty.gguf"]), &["{dir}/empty.gguf"]).files([text("empty.gguf", "")]),
        fails(&generate(&["--model", "{dir}/folder"]), &["{dir}/folder/config.json: missing: a Hugging Face model folder needs config.json"]).files([model("folder", File::Folder)]),
        fails(&generate(&["--model", "{dir}/hf"]), &["{dir}/hf/config.json: invalid JSON", "vocab_size"]).files([text("hf/config.json", "{\"model_type\": \"llama\"}")]),
        fails(&generate(&["--model", "{dir}/hf"]), &["{dir}/hf/config.json"]).files([text("hf/config.json", "not json")]),
        fails(&generate(&["--dtype", "bogus"]), &["invalid value 'bogus' for '--dtype", "valid are quantized, f32, f16, bf16"]),
        fails(&generate(&["--dtype", "F32"]), &["valid are quantized, f32, f16, bf16"]),
        fails(&generate(&["--kv-dtype", "q2"]), &["invalid value 'q2' for '--kv-dtype", "valid are f32, f16, bf16, q8, q4"]),
        fails(&generate(&["--kv-dtype", "quantized"]), &["valid are f32, f16, bf16, q8, q4"]),
        fails(&["run", "--context", "{dir}/long.txt", "--question", "q", "--press", "{dir}/think.toml", "--kv-dtype", "q4"], &["keeps only some key channels per head (think)", "a q4 KV cache (--kv-dtype) is not supported with it"]).files([long_ctx(), text("think.toml", "press = \"think\"\nkey_channel_compression_ratio = 0.5\n")]),
        succeeds(&["compress", "--context", "{dir}/long.txt", "--press", "{dir}/knorm.toml", "--kv-dtype", "q8", "--out", "{dir}/c.kvp"], &["of the full q8 cache", "KV cache q8"]).files([long_ctx(), text("knorm.toml", "press = \"knorm\"\ncompression_ratio = 0.5\n")]),
        fails(&["run", "--context", "{dir}/long.txt", "--question", "q", "--press", "{dir}/think.toml", "--kv-dtype", "f16"], &["keeps only some key channels per head (think)", "a f16 KV cache (--kv-dtype) is not supported with it", "use --kv-dtype f32"]).files([long_ctx(), text("think.toml", "press = \"think\"\nkey_channel_compression_ratio = 0.5\n")]),
        // The full cache a report compares with is counted in the cache's own storage (a
        // quantized cache holds the prefill in f32 only until it compresses).
        succeeds(&["run", "--context", "{dir}/long.txt", "--question", "q", "--press", "{dir}/knorm.toml", "--kv-dtype", "q4", "--max-new-tokens", "2"], &["A: ", "| kept "]).files([long_ctx(), text("knorm.toml", "press = \"knorm\"\ncompression_ratio = 0.5\n")]).check(four_bit_full_cache_before_compression),
        // Head-wise presses keep their flattened per-head cache in any storage.
        succeeds(&["run", "--context", "{dir}/long.txt", "--question", "q", "--press", "{dir}/adakv.toml", "--kv-dtype", "f16", "--max-new-tokens", "2"], &["A: ", "kept 49.9%"]).files([long_ctx(), text("adakv.toml", adakv)]).check(two_bytes_per_value_before_compression),
        succeeds(&["compress", "--context", "{dir}/long.txt", "--press", "{dir}/adakv.toml", "--kv-dtype", "bf16", "--out", "{dir}/c.kvp"], &["KV cache bf16"]).files([long_ctx(), text("adakv.toml", adakv)]),
        // A renamed copy of the model is the same model.
        succeeds(&generate(&["--model", "{dir}/copy.gguf"]), &["prefill:"]).files([model("copy.gguf", File::ModelCopy)]),
        // A narrower KV cache stores half the bytes (f16: 2 bytes per value).
        succeeds(&generate(&["--kv-dtype", "f16"]), &["KV cache:"]).check(half_of_f32),
        succeeds(&generate(&["--dtype", "f32", "--kv-dtype", "bf16"]), &["KV cache:"]).check(half_of_f32),
        // A 4-bit cache stores 40 bytes per row of 64 (codes, f16 step and minimum per group
        // of 32); the last token appended is still in f32.
        succeeds(&generate(&["--kv-dtype", "q4"]), &["KV cache:"]).check(four_bit_codes),
        // A head-wise press keeps each head's own tokens in 4 bits.
        succeeds(&["run", "--context", "{dir}/long.txt", "--question", "q", "--press", "{dir}/adakv.toml", "--kv-dtype", "q4"], &["kept "]).files([long_ctx(), text("adakv.toml", adakv)]).check(head_wise_four_bit_codes),
    ]
}

/// `(prefill tokens, KV bytes)` of `kvpress generate`'s report.
fn generate_kv_bytes(output: &str) -> Result<(usize, usize), String> {
    let number = |after: &str, until: char| -> Option<usize> {
        let start = output.find(after)? + after.len();
        output[start..].split(until).next()?.trim().parse().ok()
    };
    let tokens = number("prefill: ", ' ').ok_or("no prefill token count")?;
    let bytes = number("MiB (", ' ').ok_or("no KV byte count")?;
    Ok((tokens, bytes))
}

/// The q4 cache of the default model (30 layers, 3 KV heads, rows of 64): every token but the
/// last in 40 bytes per row, the last in f32.
fn four_bit_codes(_: &std::path::Path, output: &str) -> Result<(), String> {
    let (tokens, bytes) = generate_kv_bytes(output)?;
    let expected = tokens * 30 * 2 * 3 * 40 + 30 * 2 * 3 * 64 * 4;
    match bytes == expected {
        true => Ok(()),
        false => Err(format!(
            "KV cache {bytes} bytes for {tokens} tokens, expected {expected} (q4)"
        )),
    }
}

/// `run`'s context report: AdaKV's kept rows, 40 bytes per row of 64 like the full q4 cache's
/// (`context: N tokens | kept X% | KV cache A MiB -> B MiB (A -> B bytes)`).
fn head_wise_four_bit_codes(_: &std::path::Path, output: &str) -> Result<(), String> {
    let after = |marker: &str| output.find(marker).map(|i| &output[i + marker.len()..]);
    let kept: f64 = after("| kept ")
        .and_then(|rest| rest.split('%').next()?.parse().ok())
        .ok_or("no kept fraction")?;
    let bytes: Vec<f64> = after("MiB (")
        .and_then(|rest| rest.split(" bytes").next())
        .map(|pair| pair.split(" -> ").filter_map(|n| n.parse().ok()).collect())
        .ok_or("no byte counts")?;
    let [full, stored] = bytes[..] else {
        return Err(format!("byte counts {bytes:?}"));
    };
    let stored_fraction = 100.0 * stored / full;
    match (stored_fraction - kept).abs() <= 0.1 && kept < 75.0 {
        true => Ok(()),
        false => Err(format!(
            "{stored} of {full} bytes stored is {stored_fraction:.2}% of a q4 full cache; kept {kept}%"
        )),
    }
}

/// The generation's KV cache holds 2 bytes per value: the prompt's tokens and the first answer
/// token (the second is not fed back) x 30 layers x 2 (K and V) x 3 KV heads x 64 dims x 2 bytes.
fn half_of_f32(_: &std::path::Path, output: &str) -> Result<(), String> {
    let (tokens, bytes) = generate_kv_bytes(output)?;
    let expected = (tokens + 1) * 30 * 2 * 3 * 64 * 2;
    match bytes == expected {
        true => Ok(()),
        false => Err(format!(
            "KV cache {bytes} bytes for {tokens} tokens, expected {expected} (2 bytes per value)"
        )),
    }
}

/// `run`'s report of a compressed q4 cache: before compression, the whole context in 4-bit
/// codes (per token, layer and KV head: keys and values of 64 channels, 32 bytes of codes and
/// two groups' f16 step and minimum each).
fn four_bit_full_cache_before_compression(_: &std::path::Path, output: &str) -> Result<(), String> {
    let (tokens, bytes) = report_before_compression(output)?;
    let expected = tokens * 30 * 3 * 2 * (32 + 2 * 4);
    match bytes == expected {
        true => Ok(()),
        false => Err(format!(
            "KV cache {bytes} bytes before compression for {tokens} tokens, expected {expected} \
             (q4 codes and group parameters)"
        )),
    }
}

/// The context tokens and the bytes of the full cache in `run`'s report.
fn report_before_compression(output: &str) -> Result<(usize, usize), String> {
    let field = |prefix: &str, end: char| {
        let at = output
            .find(prefix)
            .ok_or(format!("no `{prefix}` in the output"))?
            + prefix.len();
        let text: String = output[at..].chars().take_while(|&c| c != end).collect();
        text.trim()
            .parse::<usize>()
            .map_err(|e| format!("`{prefix}{text}`: {e}"))
    };
    Ok((field("context: ", ' ')?, field("MiB (", ' ')?))
}

/// `run`'s report of a compressed f16 cache: before compression, the whole context at 2 bytes
/// per value, plus the flattened cache's bookkeeping (offset, capacity and length of each of
/// the 30 x 3 heads).
fn two_bytes_per_value_before_compression(_: &std::path::Path, output: &str) -> Result<(), String> {
    let (tokens, bytes) = report_before_compression(output)?;
    let expected = tokens * 30 * 2 * 3 * 64 * 2 + 30 * 3 * 3 * std::mem::size_of::<usize>();
    match bytes == expected {
        true => Ok(()),
        false => Err(format!(
            "KV cache {bytes} bytes before compression for {tokens} tokens, expected {expected} \
             (2 bytes per value)"
        )),
    }
}
