//! What the grid checks with the model before any work (context lengths against the tasks and
//! the model's positions, dataset lines too long for it) and what a rerun into the same output
//! folder resumes from: only rows made with this run's model, dtypes, presses and samples; any
//! other settings are refused naming what changed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kvpress::candle::{DType, Device};
use kvpress::models::{load_model, LoadedModel};
use kvpress_eval::{
    prepare, read_results, run, Error, EvalConfig, LineProblem, RunOptions, RESULTS_FILE,
    SETTINGS_FILE,
};

fn model() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
        load_model(&path, None, &Device::Cpu).expect("the default model loads")
    })
}

fn config(text: &str) -> EvalConfig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eval.toml");
    std::fs::write(&path, text).unwrap();
    EvalConfig::from_file(&path).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// A grid of one small NIAH sample, the full cache and `presses`.
fn tiny(presses: &str) -> EvalConfig {
    config(&format!(
        "tasks = [\"niah_single\"]\ncontext_lengths = [96]\nsamples = 1\n\
         compression_ratios = [0.5]\n{presses}"
    ))
}

const KNORM: &str = "[[presses]]\nname = \"knorm\"\nconfig = { press = \"knorm\" }\n";

fn prepare_error(config: &EvalConfig, out: &Path, options: &RunOptions) -> Error {
    match prepare(model(), config, out, options) {
        Ok(prepared) => panic!("prepared {} rows", prepared.rows),
        Err(error) => error,
    }
}

#[test]
fn context_lengths_must_hold_the_task_and_fit_the_model() {
    let out = tempfile::tempdir().unwrap();
    let options = RunOptions::default();
    let short = config(
        "tasks = [\"niah_single\", \"common_words\"]\ncontext_lengths = [10]\nsamples = 3\n\
         compression_ratios = [0.5]\npresses = []\n",
    );
    let error = prepare_error(&short, out.path(), &options);
    let Error::ContextTooShort {
        task,
        context_length: 10,
        minimum,
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(task, "niah_single");
    assert!(*minimum > 10, "{error}");
    let message = format!("{error}");
    assert!(
        message.contains(&format!("at least {minimum}")),
        "{message}"
    );
    // The minimum named is enough for every sample of the task.
    let enough = config(&format!(
        "tasks = [\"niah_single\"]\ncontext_lengths = [{minimum}]\nsamples = 3\n\
         compression_ratios = [0.5]\npresses = []\n"
    ));
    prepare(model(), &enough, out.path(), &options).unwrap();

    let long = config(
        "tasks = [\"niah_single\"]\ncontext_lengths = [8190]\nsamples = 1\n\
         compression_ratios = [0.5]\npresses = []\n",
    );
    let error = prepare_error(&long, tempfile::tempdir().unwrap().path(), &options);
    let Error::ContextTooLong {
        context_length: 8190,
        max_positions: 8192,
        tokens,
        largest_length: Some(largest),
        ..
    } = error
    else {
        panic!("{error:?}")
    };
    assert!(tokens > 8192);
    // The length the error suggests runs.
    assert!(format!("{error}").contains(&format!(
        "longest context length whose samples all fit is {largest}"
    )));
    let suggested = config(&format!(
        "tasks = [\"niah_single\"]\ncontext_lengths = [{largest}]\nsamples = 1\n\
         compression_ratios = [0.5]\npresses = []\n"
    ));
    prepare(
        model(),
        &suggested,
        tempfile::tempdir().unwrap().path(),
        &options,
    )
    .unwrap();
    // A length far beyond the model is refused before any sample is generated.
    let huge = config(
        "tasks = [\"niah_single\"]\ncontext_lengths = [100000000]\nsamples = 1\n\
         compression_ratios = [0.5]\npresses = []\n",
    );
    let start = std::time::Instant::now();
    let error = prepare_error(&huge, tempfile::tempdir().unwrap().path(), &options);
    assert!(
        matches!(
            &error,
            Error::ContextTooLong {
                max_positions: 8192,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(start.elapsed().as_secs() < 10, "refused at once");
    assert!(
        format!("{error}").contains("longest context length whose samples all fit is 81"),
        "{error}"
    );
}

#[test]
fn dataset_lines_too_long_for_the_model_are_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    let long = "word ".repeat(9000);
    std::fs::write(
        &data,
        format!(
            "{{\"context\": \"The code is 42.\", \"question\": \"Code?\", \"answer\": \"42\"}}\n\
             {{\"context\": \"{long}\", \"question\": \"Code?\", \"answer\": \"42\"}}\n"
        ),
    )
    .unwrap();
    let grid = config(&format!(
        "dataset = {:?}\ncompression_ratios = [0.5]\n\
         presses = []\n",
        data.to_str().unwrap()
    ));
    let out = dir.path().join("out");
    let error = prepare_error(&grid, &out, &RunOptions::default());
    assert!(
        matches!(
            &error,
            Error::DatasetLine {
                line: 2,
                problem: LineProblem::TooLong {
                    max_positions: 8192,
                    ..
                },
                ..
            }
        ),
        "{error:?}"
    );
    let skipping = RunOptions {
        skip_bad: true,
        ..RunOptions::default()
    };
    let prepared = prepare(model(), &grid, &out, &skipping).unwrap();
    assert_eq!(prepared.samples, 1);
    assert_eq!(prepared.skipped.len(), 1);
    assert_eq!(prepared.skipped[0].line, 2);
    assert!(prepared.skipped[0].to_string().contains("data.jsonl:2: "));
}

/// One run's rows, then reruns with one thing changed each: each is refused, naming it.
#[test]
fn a_rerun_resumes_only_rows_made_with_its_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let options = RunOptions::default();
    let grid = tiny(KNORM);
    let first = run(model(), &grid, &out, &options, &mut |_| {}).unwrap();
    assert_eq!(first.rows.len(), 2);
    assert!(first.rows.iter().all(|row| row.fingerprint.is_some()));
    let settings = std::fs::read_to_string(out.join(SETTINGS_FILE)).unwrap();
    assert!(settings.contains("\"--kv-dtype\": \"f32\""), "{settings}");

    // The same run finds every row.
    let again = prepare(model(), &grid, &out, &options).unwrap();
    assert_eq!((again.found, again.rows), (2, 2));
    drop(again);

    let changed = |error: Error, setting: &str, was: &str, now: &str| {
        let Error::SettingsChanged { changes, .. } = &error else {
            panic!("{setting}: {error:?}");
        };
        assert_eq!(changes.len(), 1, "{error}");
        assert_eq!(
            (
                changes[0].setting.as_str(),
                changes[0].was.as_str(),
                changes[0].now.as_str()
            ),
            (setting, was, now)
        );
        error.to_string()
    };
    let mut f16 = model().clone();
    f16.model
        .set_kv_storage(kvpress::models::KvStorage::Float(DType::F16))
        .unwrap();
    let error = prepare(&f16, &grid, &out, &options).map(drop).unwrap_err();
    let message = changed(error, "--kv-dtype", "f32", "f16");
    assert!(
        message.contains("were made with --kv-dtype f32; this run uses f16: use another --out"),
        "{message}"
    );
    let other_model = RunOptions {
        model_sha256: Some("0".repeat(64)),
        ..RunOptions::default()
    };
    let error = prepare_error(&grid, &out, &other_model);
    let zeros = format!("sha256:{}", "0".repeat(64));
    let sha256 = first_sha256(&out);
    changed(error, "--model", &sha256, &zeros);
    let mut longer = grid.clone();
    longer.max_new_tokens = Some(5);
    changed(
        prepare_error(&longer, &out, &options),
        "max_new_tokens",
        "each task's own",
        "5",
    );
    let mut reseeded = grid.clone();
    reseeded.seed = 1;
    changed(prepare_error(&reseeded, &out, &options), "seed", "0", "1");
    let renamed = tiny("[[presses]]\nname = \"knorm\"\nconfig = { press = \"streaming_llm\" }\n");
    let error = prepare_error(&renamed, &out, &options);
    assert!(
        matches!(&error, Error::SettingsChanged { changes, .. } if changes[0].setting == "press `knorm`"),
        "{error:?}"
    );

    // Extending the grid resumes: the new press's rows are the only ones missing.
    let extended = tiny(&format!(
        "{KNORM}[[presses]]\nname = \"sl\"\nconfig = {{ press = \"streaming_llm\" }}\n"
    ));
    let prepared = prepare(model(), &extended, &out, &options).unwrap();
    assert_eq!((prepared.found, prepared.rows), (2, 3));
}

fn first_sha256(out: &Path) -> String {
    let text = std::fs::read_to_string(out.join(SETTINGS_FILE)).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["settings"]["--model"].as_str().unwrap().to_string()
}

/// Rows whose fingerprint differs from this run's, rows without one, and fingerprinted rows
/// without the settings file are refused.
#[test]
fn rows_that_cannot_be_vouched_for_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let options = RunOptions::default();
    let grid = tiny(KNORM);
    run(model(), &grid, &out, &options, &mut |_| {}).unwrap();
    let results = out.join(RESULTS_FILE);
    let text = std::fs::read_to_string(&results).unwrap();
    let fingerprint = read_results(&out).unwrap()[1].fingerprint.clone().unwrap();

    std::fs::write(&results, text.replace(&fingerprint, "0123")).unwrap();
    let error = prepare_error(&grid, &out, &options);
    assert!(
        matches!(&error, Error::RowsChanged { count: 1, first, .. } if first.contains("knorm at 0.500")),
        "{error:?}"
    );

    let unsigned: String = read_results(&out)
        .unwrap()
        .into_iter()
        .map(|mut row| {
            row.fingerprint = None;
            format!("{}\n", serde_json::to_string(&row).unwrap())
        })
        .collect();
    std::fs::write(&results, unsigned).unwrap();
    let error = prepare_error(&grid, &out, &options);
    assert!(
        matches!(&error, Error::UnfingerprintedRows { count: 2, .. }),
        "{error:?}"
    );
    assert!(
        format!("{error}").contains("--trust-unfingerprinted"),
        "{error}"
    );
    let trusting = RunOptions {
        trust_unfingerprinted: true,
        ..RunOptions::default()
    };
    let prepared = prepare(model(), &grid, &out, &trusting).unwrap();
    assert_eq!((prepared.found, prepared.rows), (2, 2));
    drop(prepared);

    std::fs::write(&results, text).unwrap();
    std::fs::remove_file(out.join(SETTINGS_FILE)).unwrap();
    let error = prepare_error(&grid, &out, &options);
    assert!(
        matches!(error, Error::SettingsFileMissing { .. }),
        "{error:?}"
    );
}

/// The committed results (their first 3,960 rows written before rows had fingerprints) are
/// refused for resuming unless trusted, and then every one of their 10,200 rows is found.
#[test]
fn the_documented_results_resume_only_when_trusted() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    for file in [RESULTS_FILE, SETTINGS_FILE] {
        std::fs::copy(
            root.join("docs/eval/question_agnostic").join(file),
            dir.path().join(file),
        )
        .unwrap();
    }
    let grid = EvalConfig::from_file(&root.join("configs/eval/default.toml")).unwrap();
    let error = prepare_error(&grid, dir.path(), &RunOptions::default());
    assert!(
        matches!(error, Error::UnfingerprintedRows { count: 3960, .. }),
        "{error:?}"
    );
    let trusting = RunOptions {
        trust_unfingerprinted: true,
        ..RunOptions::default()
    };
    let prepared = prepare(model(), &grid, dir.path(), &trusting).unwrap();
    assert_eq!((prepared.found, prepared.rows), (10200, 10200));
}
