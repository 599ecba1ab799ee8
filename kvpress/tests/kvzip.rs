//! KVzip through the runtime: the reconstruction pass leaves the context's cache as it was
//! (only the context is stored), the cache stores the kept fraction of the entries (+ the
//! flattened layout's metadata) in every storage, the answer survives, a saved context loads
//! with its ragged heads, and a context too long to be reconstructed is refused before it is
//! prefilled.

#[path = "common/needle.rs"]
mod needle;

use kvpress::core::press::press_from_toml;
use kvpress::hooks::{AnswerOptions, ContextSession, Pipeline, PromptSplit};
use needle::{model, needle, QUESTION};

fn ask(context: &kvpress::hooks::CompressedContext) -> kvpress::hooks::Answer {
    let options = AnswerOptions {
        max_new_tokens: 32,
        ..Default::default()
    };
    context.ask_with(QUESTION, options).unwrap()
}

#[test]
fn kvzip_stores_what_it_keeps_in_every_storage_and_answers() {
    let press = press_from_toml("press = \"kvzip\"\ncompression_ratio = 0.75\n").unwrap();
    for kv_dtype in ["f32", "f16", "q4"] {
        let loaded = model(kv_dtype);
        let ids = PromptSplit::context_ids(&loaded, &needle()).unwrap();
        let (session, report) =
            ContextSession::compress(&loaded.model, &ids, press.as_ref(), &[]).unwrap();
        assert_eq!(
            session.cache().seen_tokens(),
            ids.len(),
            "{kv_dtype}: positions"
        );
        let kept = report.kept_fraction();
        assert!((kept - 0.25).abs() < 1e-3, "{kv_dtype}: kept {kept}");
        let limit = kept * report.kv_bytes_full as f64 * 1.02;
        assert!(
            report.kv_bytes as f64 <= limit,
            "{kv_dtype}: {} bytes stored for {} full (limit {limit})",
            report.kv_bytes,
            report.kv_bytes_full
        );
        // Heads and layers keep different shares; nothing of the reconstruction stays.
        let lengths: Vec<usize> = report
            .layers
            .iter()
            .map(|l| l.selection.total_kept())
            .collect();
        assert!(
            lengths.iter().any(|&l| l != lengths[0]),
            "{kv_dtype}: one share per layer"
        );
        assert!(report.cache_lengths().iter().all(|&l| l <= ids.len()));
    }
    let pipe = Pipeline::from_loaded(model("f32"));
    let context = pipe.compress(&needle(), press.as_ref()).unwrap();
    let answer = ask(&context);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kvzip.kvp");
    context.save(&file).unwrap();
    let loaded = pipe.load_context(&file).unwrap();
    // As compressed (answering grows the buffers, which rewinding keeps).
    assert_eq!(
        loaded.kv_bytes().unwrap(),
        context.report().unwrap().kv_bytes
    );
    let again = ask(&loaded);
    assert_eq!(
        again.tokens, answer.tokens,
        "the saved context answers the same"
    );
}

#[test]
fn a_context_too_long_to_reconstruct_is_refused_before_its_prefill() {
    let loaded = model("f32");
    let press = press_from_toml("press = \"kvzip\"\ncompression_ratio = 0.5\n").unwrap();
    let ids: Vec<u32> =
        std::iter::repeat_n(PromptSplit::context_ids(&loaded, &needle()).unwrap(), 6)
            .flatten()
            .take(7000)
            .collect();
    let start = std::time::Instant::now();
    let error = ContextSession::compress(&loaded.model, &ids, press.as_ref(), &[])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("use a smaller chunk_size (at most"),
        "{error}"
    );
    assert!(start.elapsed().as_secs() < 5, "refused before the prefill");
    // The chunk size it names fits.
    let at_most: usize = error
        .split("at most ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let smaller = press_from_toml(&format!(
        "press = \"kvzip\"\ncompression_ratio = 0.5\nchunk_size = {at_most}\n"
    ))
    .unwrap();
    kvpress::hooks::reconstruction::reconstruction_chunks(&loaded.model, &ids, at_most).unwrap();
    assert!(smaller.reconstruction().is_some());
}
