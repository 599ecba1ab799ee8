//! `kvpress eval` end to end on a small grid: the pipeline runs, the full cache finds the needle,
//! a rerun resumes instead of recomputing, outputs are written, and datasets report bad lines.

use std::path::PathBuf;

use kvpress::candle::Device;
use kvpress::models::load_model;
use kvpress_eval::dataset::read_dataset;
use kvpress_eval::{report, run, Error, EvalConfig, LineProblem, RunOptions};

fn repository_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[test]
fn the_ci_grid_runs_and_resumes() {
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    let model = load_model(&path, None, &Device::Cpu).expect("the default model loads");
    let config = EvalConfig::from_file(&repository_file("configs/eval/ci.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut updates = 0;
    let options = RunOptions::default();
    let output = run(&model, &config, dir.path(), &options, &mut |p| {
        updates += 1;
        assert!(p.done <= p.total && p.eta_seconds >= 0.0);
    })
    .unwrap();
    assert!(output.skipped.is_empty());
    let rows = output.rows;
    let t = output.timings;
    assert!(t.prefill_seconds > 0.0 && t.decoding_seconds > 0.0 && t.answer_tokens >= rows.len());
    assert_eq!(rows.len(), 9, "3 samples x (full cache + 2 presses)");
    assert!(
        rows.iter().all(|r| r.fingerprint.is_some()),
        "rows are signed"
    );
    assert_eq!(updates, 9);
    let full: Vec<f64> = rows
        .iter()
        .filter(|r| r.press == report::FULL_CACHE)
        .map(|r| r.score)
        .collect();
    let accuracy = full.iter().sum::<f64>() / full.len() as f64;
    assert!(
        accuracy >= 0.8,
        "full-cache NIAH accuracy at 1k is {accuracy}"
    );

    // A second run finds every row and computes nothing.
    let again = run(&model, &config, dir.path(), &options, &mut |_| {
        panic!("nothing is left to compute")
    })
    .unwrap();
    assert_eq!(again.rows, rows);
    assert_eq!(again.timings, Default::default());

    let table = report::markdown(&rows);
    assert!(table.contains("| full cache | 0.000 |"), "{table}");
    assert!(table.contains("| knorm | 0.500 |") && table.contains("| adakv_snapkv | 0.500 |"));
    let plots = report::svg_plots(&rows);
    assert!(
        plots["question_agnostic"].starts_with("<svg")
            && plots["question_agnostic"].contains("knorm")
    );
}

#[test]
fn datasets_name_their_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.jsonl");
    std::fs::write(
        &file,
        concat!(
            "{\"context\": \"The code is 42.\", \"question\": \"What is the code?\", \"answer\": \"42\"}\n",
            "{\"context\": \"no question here\"}\n",
            "{\"context\": \"A and B.\", \"questions\": [\"A?\", \"B?\"], \"answers\": [[\"A\"], \"B\"]}\n",
        ),
    )
    .unwrap();
    let error = read_dataset(&file, false).unwrap_err();
    assert!(
        matches!(
            &error,
            Error::DatasetLine {
                line: 2,
                problem: LineProblem::NoQuestion,
                ..
            }
        ),
        "{error:?}"
    );
    let error = format!("{error:#}");
    assert!(
        error.contains("data.jsonl:2:") && error.contains("--skip-bad"),
        "{error}"
    );
    let dataset = read_dataset(&file, true).unwrap();
    let samples = &dataset.samples;
    assert_eq!(samples.len(), 2);
    assert_eq!(
        samples[1].0, 2,
        "the sample index is the line's index in the file"
    );
    assert_eq!(samples[1].1.questions.len(), 2);
    assert_eq!(samples[1].1.questions[1].answers, vec!["B".to_string()]);
    assert_eq!(dataset.skipped.len(), 1);
    assert_eq!(dataset.skipped[0].line, 2);
    assert!(dataset.skipped[0].to_string().contains("data.jsonl:2: "));
}

#[test]
fn bad_eval_configs_say_what_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let write = |text: &str| {
        let path = dir.path().join("eval.toml");
        std::fs::write(&path, text).unwrap();
        EvalConfig::from_file(&path).unwrap_err()
    };
    let base = "context_lengths = [512]\nsamples = 1\ncompression_ratios = [0.5]\n";
    let error = write(&format!("tasks = [\"niah\"]\n{base}presses = []\n"));
    assert!(
        matches!(&error, Error::UnknownTask { name, valid } if name == "niah" && valid.len() == 9),
        "{error:?}"
    );
    let error = format!("{error:#}");
    assert!(
        error.contains("unknown task `niah`: valid are niah_single"),
        "{error}"
    );
    let error = write(&format!(
        "tasks = [\"niah_single\"]\n{base}[[presses]]\nname = \"x\"\nconfig = {{ press = \"snap\" }}\n"
    ));
    assert!(
        matches!(&error, Error::InvalidPress { press, error, .. }
            if press == "x" && matches!(**error, Error::Core(_))),
        "{error:?}"
    );
    let error = format!("{error:#}");
    assert!(error.contains("unknown press `snap`"), "{error}");
    let error = write(&format!(
        "tasks = [\"niah_single\"]\n{base}presses = []\nseed = \"x\"\n"
    ));
    assert!(matches!(error, Error::ConfigFile { .. }), "{error:?}");
    let error = write(
        "tasks = [\"niah_single\"]\ncontext_lengths = [512]\nsamples = 1\n\
                       compression_ratios = [1.5]\npresses = []\n",
    );
    assert!(
        matches!(&error, Error::InvalidConfig { field: "compression_ratios", message }
            if message == "compression ratio 1.5 is outside [0, 1)"),
        "{error:?}"
    );
}

#[test]
fn fidelity_is_exact_for_the_full_cache_and_measures_compression() {
    use kvpress::core::press::press_from_toml;
    use kvpress::core::NoPress;
    use kvpress_eval::fidelity;
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    let model = load_model(&path, None, &Device::Cpu).expect("the default model loads");
    let text = std::fs::read_to_string(repository_file("data/needle-haystack.txt")).unwrap();
    let ids = model.tokenizer.encode(&text, false).unwrap();
    let (context, continuation) = ids.split_at(ids.len() - 64);
    let same = fidelity(&model.model, context, continuation, &NoPress::default()).unwrap();
    assert_eq!(same.mean_kl, 0.0);
    assert_eq!(same.top1_agreement, 1.0);
    assert_eq!(same.perplexity_ratio, 1.0);
    assert!(same.attention_error_per_layer.iter().all(|&e| e == 0.0));
    assert_eq!(same.attention_error_per_layer.len(), 30);

    let press = press_from_toml("press = \"streaming_llm\"\ncompression_ratio = 0.9\n").unwrap();
    let pressed = fidelity(&model.model, context, continuation, press.as_ref()).unwrap();
    assert_eq!(pressed.kl_per_token.len(), 64);
    assert!(pressed.mean_kl > 0.0 && pressed.mean_kl.is_finite());
    assert!((0.0..=1.0).contains(&pressed.top1_agreement));
    assert!(pressed.attention_error_per_layer.iter().any(|&e| e > 0.0));
}

#[test]
fn a_results_line_cut_short_is_dropped_and_repaired() {
    use kvpress_eval::{read_results, repair_results, RESULTS_FILE};
    let dir = tempfile::tempdir().unwrap();
    assert!(read_results(dir.path()).unwrap().is_empty(), "no file yet");
    let row = r#"{"task":"niah_single","setting":"question_agnostic","context_length":512,"sample":0,"question":0,"press":"knorm","compression_ratio":0.5,"score":1.0,"answer":" 42","context_tokens":500}"#;
    let path = dir.path().join(RESULTS_FILE);
    std::fs::write(&path, format!("{row}\n{}", &row[..40])).unwrap();
    assert_eq!(read_results(dir.path()).unwrap().len(), 1);
    assert!(repair_results(dir.path()).unwrap());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{row}\n"));
    assert!(
        !repair_results(dir.path()).unwrap(),
        "nothing left to repair"
    );
    std::fs::write(&path, format!("{}\n{row}\n", &row[..40])).unwrap();
    let error = read_results(dir.path()).unwrap_err();
    assert!(
        matches!(error, Error::ResultsLine { line: 1, .. }),
        "{error:?}"
    );
    let error = format!("{error:#}");
    assert!(
        error.contains("results.jsonl:1: not a result row: "),
        "{error}"
    );
}

/// The results files of the documented grids read (a rerun resumes from them), and each row
/// writes back as the line it was read from.
#[test]
fn the_documented_results_read_and_write_back_unchanged() {
    use kvpress_eval::{read_results, Setting, RESULTS_FILE};
    for setting in [Setting::QuestionAgnostic, Setting::QuestionAware] {
        let dir = repository_file("docs/eval").join(setting.as_str());
        let text = std::fs::read_to_string(dir.join(RESULTS_FILE)).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let rows = read_results(&dir).unwrap();
        assert_eq!(rows.len(), lines.len(), "{setting}");
        for (row, line) in rows.iter().zip(lines) {
            assert_eq!(row.setting, setting);
            assert_eq!(serde_json::to_string(row).unwrap(), line);
        }
    }
}

/// The grid refuses, at config-check time, presses it cannot run at its ratios: decode-time
/// presses (it only compresses the prefill) and presses that own their ratios; both are the
/// front-end check's refusal (`kvpress_hooks::check_press(FrontEnd::Eval, ..)`).
#[test]
fn the_config_check_refuses_what_the_grid_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    for (press, expected) in [
        (
            "{ press = \"decoding\", inner = { press = \"knorm\" } }",
            "compresses while tokens are generated",
        ),
        (
            "{ press = \"compression_ratio_decoding\", inner = { press = \"knorm\" } }",
            "compresses while tokens are generated",
        ),
        (
            "{ press = \"prefill_decoding\", decoding = { press = \"decoding\", inner = { \
             press = \"knorm\" } } }",
            "compresses while tokens are generated",
        ),
        (
            "{ press = \"composed\", presses = [{ press = \"knorm\" }] }",
            "sets its own compression ratios",
        ),
        (
            "{ press = \"per_layer\", compression_ratios = [0.5], inner = { press = \"knorm\" } }",
            "sets its own compression ratios",
        ),
    ] {
        let path = dir.path().join("grid.toml");
        std::fs::write(
            &path,
            format!(
                "tasks = [\"niah_single\"]\ncontext_lengths = [256]\nsamples = 1\n\
                 compression_ratios = [0.5]\n[[presses]]\nname = \"p\"\nconfig = {press}\n"
            ),
        )
        .unwrap();
        let error = EvalConfig::from_file(&path).expect_err(press);
        let Error::InvalidPress {
            press: name,
            error: cause,
            ..
        } = &error
        else {
            panic!("{error:?}");
        };
        assert_eq!(name, "p");
        let Error::Hooks(cause) = cause.as_ref() else {
            panic!("{cause:?}");
        };
        assert!(
            matches!(
                cause.as_ref(),
                kvpress::hooks::Error::PressNotSupported {
                    front_end: "eval",
                    ..
                }
            ),
            "{cause:?}"
        );
        assert!(format!("{error:#}").contains(expected), "{error:#}");
    }
}
