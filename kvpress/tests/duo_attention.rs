//! DuoAttention through the runtime: calibrated once on the model before it compresses, its
//! streaming heads store only their sinks and recent tokens (in every storage type), the eval
//! grid's recorded prefill keeps the same tokens as a compression, a saved context answers the
//! same, it runs in every front end but refuses to sit inside a wrapper, and every way of giving
//! calibration texts either works or is refused by name.

#[path = "common/needle.rs"]
mod needle;

use kvpress::core::press::{press_from_toml, Press};
use kvpress::hooks::{
    calibrate, check_press, AnswerOptions, ContextSession, FrontEnd, Pipeline, PromptSplit,
    RecordedPrefill,
};
use needle::{model, needle, QUESTION};

fn duo(ratio: f64) -> Box<dyn Press> {
    press_from_toml(&format!(
        "press = \"duo_attention\"\nhead_compression_ratio = {ratio}\n"
    ))
    .unwrap()
}

#[test]
fn streaming_heads_store_their_sinks_and_recent_tokens_in_every_storage() {
    let press = duo(0.5);
    for kv_dtype in ["f32", "f16", "q4"] {
        let loaded = model(kv_dtype);
        let ids = PromptSplit::context_ids(&loaded, &needle()).unwrap();
        let n = ids.len();
        assert!(
            n > 128 + 256,
            "the context is longer than sinks + recent tokens"
        );
        let (session, report) =
            ContextSession::compress(&loaded.model, &ids, press.as_ref(), &[]).unwrap();
        assert_eq!(session.cache().seen_tokens(), n, "{kv_dtype}: positions");
        // Half of the (layer, head) pairs keep 384 tokens, the others all n.
        let streaming = streaming_heads(press.as_ref());
        let n_heads = loaded.model.config().n_kv_heads;
        let pairs = loaded.model.config().n_layers * n_heads;
        assert_eq!(streaming.len(), pairs / 2);
        for layer in &report.layers {
            for (head, kept) in layer.selection.heads().iter().enumerate() {
                let expected = match streaming.contains(&(layer.layer_idx, head)) {
                    true => 384,
                    false => n,
                };
                assert_eq!(
                    kept.len(),
                    expected,
                    "layer {} head {head}",
                    layer.layer_idx
                );
            }
        }
        let kept = report.kept_fraction();
        let expected = 1.0 - 0.5 * (n - 384) as f64 / n as f64;
        assert!((kept - expected).abs() < 1e-9, "{kv_dtype}: kept {kept}");
        let limit = kept * report.kv_bytes_full as f64 * 1.02;
        assert!(
            report.kv_bytes as f64 <= limit,
            "{kv_dtype}: {} bytes stored for {} full (limit {limit})",
            report.kv_bytes,
            report.kv_bytes_full
        );
    }
}

/// The streaming `(layer, head)` pairs the calibrated `press` reports (at its own ratio).
fn streaming_heads(press: &dyn Press) -> Vec<(usize, usize)> {
    let notes = press.calibration().expect("calibrated").notes();
    serde_json::from_value(notes["streaming_heads"].clone()).unwrap()
}

#[test]
fn the_grid_keeps_what_a_compression_keeps_and_a_saved_context_answers_the_same() {
    let loaded = model("f32");
    let ids = PromptSplit::context_ids(&loaded, &needle()).unwrap();
    let press = duo(0.25);
    let recorded = RecordedPrefill::record(&loaded.model, &ids).unwrap();
    let mut grid = recorded
        .compress_at_ratios(&loaded.model, press.as_ref(), &[0.25, 0.75], &[])
        .unwrap();
    let (_, direct) = ContextSession::compress(&loaded.model, &ids, press.as_ref(), &[]).unwrap();
    let (_, at_quarter) = grid.remove(0);
    let (_, at_three_quarters) = grid.remove(0);
    let kept = |r: &kvpress::hooks::CompressionReport| -> Vec<Vec<Vec<u32>>> {
        r.layers
            .iter()
            .map(|l| l.selection.heads().to_vec())
            .collect()
    };
    assert_eq!(kept(&at_quarter), kept(&direct), "grid ratio 0.25");
    assert!(at_three_quarters.kept_fraction() < at_quarter.kept_fraction());

    let pipe = Pipeline::from_loaded(loaded);
    let context = pipe.compress(&needle(), press.as_ref()).unwrap();
    let options = || AnswerOptions {
        max_new_tokens: 24,
        ..Default::default()
    };
    let answer = context.ask_with(QUESTION, options()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("duo.kvp");
    context.save(&file).unwrap();
    let again = pipe.load_context(&file).unwrap();
    assert_eq!(
        again.kv_bytes().unwrap(),
        context.report().unwrap().kv_bytes
    );
    assert_eq!(
        again.ask_with(QUESTION, options()).unwrap().tokens,
        answer.tokens
    );
}

#[test]
fn it_runs_in_every_front_end_but_not_inside_a_wrapper() {
    let press = duo(0.5);
    for front_end in [
        FrontEnd::Run,
        FrontEnd::Compress,
        FrontEnd::Eval,
        FrontEnd::Fidelity,
        FrontEnd::Inspect,
        FrontEnd::Trace,
        FrontEnd::Bench,
        FrontEnd::Generate,
        FrontEnd::Serve,
    ] {
        check_press(front_end, press.as_ref()).unwrap_or_else(|e| panic!("{front_end:?}: {e}"));
    }
    // Inside a wrapper it would never be calibrated: refused by name.
    let nested = press_from_toml(
        "press = \"composed\"\n[[presses]]\npress = \"duo_attention\"\nhead_compression_ratio = 0.5\n",
    )
    .unwrap();
    let error = check_press(FrontEnd::Run, nested.as_ref())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("`composed` holds `duo_attention`"),
        "{error}"
    );
}

#[test]
fn calibration_texts_come_from_the_config_a_file_or_the_bundled_text() {
    let loaded = model("f32");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("texts.json");
    std::fs::write(
        &json,
        r#"["The first text.", "A second, longer text here."]"#,
    )
    .unwrap();
    let plain = dir.path().join("texts.txt");
    std::fs::write(&plain, "one two three four five six seven eight").unwrap();
    let calibrated = |extra: &str| -> Result<serde_json::Value, String> {
        let press = press_from_toml(&format!("press = \"duo_attention\"\n{extra}"))
            .map_err(|e| e.to_string())?;
        press.validate().map_err(|e| e.to_string())?;
        calibrate(&loaded.model, press.as_ref()).map_err(|e| e.to_string())?;
        Ok(press.calibration().unwrap().notes()["calibration"].clone())
    };
    let inline = calibrated("calibration_texts = [\"a b\", \"c d\", \"e\"]\n").unwrap();
    assert_eq!(inline["texts"], serde_json::json!(["a b", "c d", "e"]));
    let from_json = calibrated(&format!("calibration_file = {:?}\n", json)).unwrap();
    assert_eq!(from_json["texts"].as_array().unwrap().len(), 2);
    let from_text =
        calibrated(&format!("calibration_file = {plain:?}\nnum_samples = 4\n")).unwrap();
    assert_eq!(
        from_text["texts"],
        serde_json::json!(["one two three", "four five", "six seven", "eight"])
    );
    let bundled = calibrated("").unwrap();
    assert_eq!(bundled["texts"].as_array().unwrap().len(), 50);
    assert_eq!(bundled["q_len"], 500);
    for (extra, named) in [
        ("calibration_texts = []\n", "calibration_texts is empty"),
        (
            &format!("calibration_texts = [\"a\"]\ncalibration_file = {plain:?}\n"),
            "not both",
        ),
        ("on_the_fly_scoring = false\n", "on_the_fly_scoring = true"),
        ("head_compression_ratio = 1.5\n", "within [0, 1]"),
        ("head_compression_ratio = -0.1\n", "within [0, 1]"),
        ("recent_size = 0\n", "recent_size"),
        (
            "calibration_file = \"/nonexistent/texts.txt\"\n",
            "cannot read",
        ),
        ("num_samples = 100000\n", "too few spaces"),
        ("calibration_texts = [\"\"]\nq_len = 0\n", "q_len"),
        ("sink = 4\n", "unknown field"),
    ] {
        let error = calibrated(extra).unwrap_err();
        assert!(error.contains(named), "{extra}: {error}");
    }
}
