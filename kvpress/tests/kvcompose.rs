//! KVCompose through the runtime: structured, every layer is a dense cache of its own length
//! (each head its own tokens, one count per layer); unstructured, heads keep their own counts in
//! the flattened cache; either stores the kept fraction of the entries, answers, and a saved
//! context answers the same; a context whose repetition does not fit the model's positions is
//! refused before its prefill.

#[path = "common/needle.rs"]
mod needle;

use kvpress::core::press::press_from_toml;
use kvpress::hooks::{check_press, AnswerOptions, ContextSession, FrontEnd, Pipeline, PromptSplit};
use needle::{model, needle, QUESTION};

#[test]
fn both_variants_store_what_they_keep_and_answer() {
    for (structured, kv_dtype) in [(true, "f32"), (true, "q4"), (false, "f16")] {
        let press = press_from_toml(&format!(
            "press = \"kvcompose\"\ncompression_ratio = 0.75\nstructured = {structured}\n"
        ))
        .unwrap();
        let loaded = model(kv_dtype);
        let ids = PromptSplit::context_ids(&loaded, &needle()).unwrap();
        let (session, report) =
            ContextSession::compress(&loaded.model, &ids, press.as_ref(), &[]).unwrap();
        let what = format!("structured {structured}, {kv_dtype}");
        assert_eq!(
            session.cache().seen_tokens(),
            ids.len(),
            "{what}: positions"
        );
        let kept = report.kept_fraction();
        // A quarter of the entries, rounded down (layers keep at least one token each).
        assert!((0.249..0.26).contains(&kept), "{what}: kept {kept}");
        let limit = kept * report.kv_bytes_full as f64 * 1.02;
        assert!(
            report.kv_bytes as f64 <= limit,
            "{what}: {} bytes stored for {} full",
            report.kv_bytes,
            report.kv_bytes_full
        );
        let lengths = report.cache_lengths();
        assert!(
            lengths.iter().all(|&l| l <= ids.len()),
            "{what}: the second pass is gone"
        );
        assert!(
            lengths.iter().any(|&l| l != lengths[0]),
            "{what}: one count per layer"
        );
        for layer in &report.layers {
            let counts: Vec<usize> = layer.selection.heads().iter().map(Vec::len).collect();
            if structured {
                assert!(counts.iter().all(|&c| c == counts[0]), "{what}: {counts:?}");
            }
        }
    }
    let pipe = Pipeline::from_loaded(model("f32"));
    let press = press_from_toml("press = \"kvcompose\"\ncompression_ratio = 0.5\n").unwrap();
    let context = pipe.compress(&needle(), press.as_ref()).unwrap();
    let options = || AnswerOptions {
        max_new_tokens: 32,
        ..Default::default()
    };
    let answer = context.ask_with(QUESTION, options()).unwrap();
    assert!(answer.text.contains("7340912"), "{}", answer.text);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kvcompose.kvp");
    context.save(&file).unwrap();
    let loaded = pipe.load_context(&file).unwrap();
    assert_eq!(
        loaded.ask_with(QUESTION, options()).unwrap().tokens,
        answer.tokens
    );
}

#[test]
fn a_context_whose_repetition_does_not_fit_is_refused_before_its_prefill() {
    let loaded = model("f32");
    let press = press_from_toml("press = \"kvcompose\"\ncompression_ratio = 0.5\n").unwrap();
    let ids: Vec<u32> =
        std::iter::repeat_n(PromptSplit::context_ids(&loaded, &needle()).unwrap(), 5)
            .flatten()
            .take(4200)
            .collect();
    let start = std::time::Instant::now();
    let error = ContextSession::compress(&loaded.model, &ids, press.as_ref(), &[])
        .unwrap_err()
        .to_string();
    assert!(error.contains("at most 4096 tokens"), "{error}");
    assert!(start.elapsed().as_secs() < 5, "refused before the prefill");
    for front_end in [
        FrontEnd::Run,
        FrontEnd::Compress,
        FrontEnd::Eval,
        FrontEnd::Serve,
    ] {
        check_press(front_end, press.as_ref()).unwrap();
    }
    let error = check_press(FrontEnd::Generate, press.as_ref())
        .unwrap_err()
        .to_string();
    assert!(error.contains("generate"), "{error}");
}
