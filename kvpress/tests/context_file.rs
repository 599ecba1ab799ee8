//! Saved compressed contexts: compress, save, load and answer gives the answer of
//! compress-then-answer in one process, for a dense and a head-wise press; the file is about
//! the kept fraction of a full cache; foreign, damaged and future files are refused clearly.

use std::collections::HashMap;
use std::path::Path;

use kvpress::candle::Device;
use kvpress::core::press::press_from_toml;
use kvpress::hooks::context_file::{load, save};
use kvpress::hooks::{ContextSession, PromptSplit};
use kvpress::models::{load_model, GenerationConfig, LoadedModel, Sampling};
use safetensors::tensor::{SafeTensors, TensorView};

const QUESTION: &str = "What is the special magic number for ocean mentioned in the provided text?";

fn context() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/needle-haystack.txt");
    std::fs::read_to_string(path).unwrap()
}

fn answer(model: &LoadedModel, session: &mut ContextSession, question_ids: &[u32]) -> Vec<u32> {
    let config = GenerationConfig {
        max_new_tokens: 24,
        sampling: Sampling::Greedy,
    };
    session
        .answer(
            &model.model,
            question_ids,
            model.tokenizer.eos_ids(),
            &config,
            &mut |_| Ok(()),
        )
        .unwrap()
        .tokens
}

/// Rewrites a context file's metadata with `edit`.
fn rewrite_metadata(path: &Path, edit: impl FnOnce(&mut HashMap<String, String>)) {
    let bytes = std::fs::read(path).unwrap();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut info = metadata.metadata().clone().unwrap();
    edit(&mut info);
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, TensorView<'_>)> = file.tensors();
    let out = safetensors::serialize(views, Some(info)).unwrap();
    std::fs::write(path, out).unwrap();
}

#[test]
fn saved_contexts_answer_like_fresh_ones_and_bad_files_are_refused() {
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    let model = load_model(&path, None, &Device::Cpu).expect("the default model loads");
    let split = PromptSplit::new(&model, &context(), QUESTION).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, config) in [
        ("snapkv", "press = \"snapkv\"\ncompression_ratio = 0.5\n"),
        (
            "adakv",
            "press = \"adakv\"\n[inner]\npress = \"snapkv\"\ncompression_ratio = 0.5\n",
        ),
    ] {
        let press = press_from_toml(config).unwrap();
        let (mut session, report) =
            ContextSession::compress(&model.model, &split.context_ids, press.as_ref(), &[])
                .unwrap();
        let fresh = answer(&model, &mut session, &split.question_ids);
        let file = dir.path().join(format!("{name}.kvp"));
        let size = save(&file, &model, &session, &split.context_ids, press.as_ref()).unwrap();
        let (mut loaded, header) = load(&file, &model).unwrap();
        assert_eq!(header.context_ids, split.context_ids);
        assert_eq!(header.press["press"], name);
        assert_eq!(loaded.cache().lengths(), session.cache().lengths());
        assert_eq!(
            answer(&model, &mut loaded, &split.question_ids),
            fresh,
            "{name}"
        );
        // The file holds what the compressed cache holds (plus a small header).
        let fraction = size as f64 / report.kv_bytes_full as f64;
        eprintln!("{name}: {size} bytes, {fraction:.3} of the full cache");
        assert!(
            (fraction - report.kept_fraction()).abs() < 0.02,
            "{name}: {fraction}"
        );
    }

    let file = dir.path().join("snapkv.kvp");
    let bytes = std::fs::read(&file).unwrap();
    let truncated = dir.path().join("truncated.kvp");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let error = format!("{:#}", load(&truncated, &model).unwrap_err());
    assert!(error.contains("truncated"), "{error}");

    let future = dir.path().join("future.kvp");
    std::fs::copy(&file, &future).unwrap();
    rewrite_metadata(&future, |info| {
        info.insert("version".into(), "2".into());
    });
    let error = format!("{:#}", load(&future, &model).unwrap_err());
    assert!(
        error.contains("version 2 context file; this kvpress reads version 1"),
        "{error}"
    );

    let foreign = dir.path().join("foreign.kvp");
    std::fs::copy(&file, &foreign).unwrap();
    rewrite_metadata(&foreign, |info| {
        let header = info.get_mut("header").unwrap();
        *header = header.replace("SmolLM2-135M-Instruct", "Other-Model");
    });
    let error = format!("{:#}", load(&foreign, &model).unwrap_err());
    assert!(error.contains("was made with model Other-Model"), "{error}");

    let not_ours = dir.path().join("model.kvp");
    std::fs::write(&not_ours, b"hello").unwrap();
    let error = format!("{:#}", load(&not_ours, &model).unwrap_err());
    assert!(error.contains("not a kvpress context file"), "{error}");
}
