//! `kvpress eval` as a user reruns it: bad dataset lines listed and counted with `--skip-bad`,
//! a rerun with other settings refused naming what changed, and the committed results (without
//! fingerprints) resumed only with `--trust-unfingerprinted`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// Tests that start model-loading processes run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn kvpress(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvpress"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A dataset whose lines 2 to 4 are bad: an empty answer, not UTF-8, too long for the model.
fn dataset(dir: &Path) -> PathBuf {
    let path = dir.join("data.jsonl");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(
        br#"{"context": "The code is 42.", "question": "What is the code?", "answer": "42"}"#,
    );
    bytes.extend_from_slice(b"\n{\"context\": \"c\", \"question\": \"q?\", \"answer\": \"\"}\n");
    bytes
        .extend_from_slice(b"{\"context\": \"caf\xe9\", \"question\": \"q\", \"answer\": \"a\"}\n");
    let long = "word ".repeat(9000);
    bytes.extend_from_slice(
        format!("{{\"context\": \"{long}\", \"question\": \"q\", \"answer\": \"a\"}}\n").as_bytes(),
    );
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn skipped_lines_are_listed_and_counted_and_changed_settings_refused() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let config = dir.path().join("eval.toml");
    std::fs::write(
        &config,
        format!(
            "dataset = {:?}\ncompression_ratios = [0.5]\n\n\
             [[presses]]\nname = \"knorm\"\nconfig = {{ press = \"knorm\" }}\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let args = [
        "eval",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let output = kvpress(&args);
    assert!(!output.status.success());
    let name = data.display().to_string();
    assert!(
        stderr(&output).contains(&format!("{name}:2: question 0 expects an empty answer")),
        "{}",
        stderr(&output)
    );

    let output = kvpress(&[&args[..], &["--skip-bad"]].concat());
    let text = stderr(&output);
    assert!(output.status.success(), "{text}");
    for (line, reason) in [
        (2, "question 0 expects an empty answer"),
        (3, "not UTF-8 text"),
        (4, "the prompt needs"),
    ] {
        assert!(
            text.contains(&format!("warning: skipped {name}:{line}: {reason}")),
            "line {line}: {text}"
        );
    }
    assert!(
        text.contains("skipped 3 bad dataset lines (listed above)"),
        "{text}"
    );
    let rows = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), 2, "{rows}");

    let output = kvpress(&[&args[..], &["--skip-bad", "--kv-dtype", "f16"]].concat());
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(&format!(
            "results in {} were made with --kv-dtype f32; this run uses f16: use another --out",
            out.display()
        )),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_committed_results_resume_only_when_trusted() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let docs = root().join("docs/eval/question_agnostic");
    // The first 3,960 rows predate fingerprints; the catalogue presses' rows carry them, with
    // the settings file they were made with.
    for file in ["results.jsonl", "eval-run.json"] {
        std::fs::copy(docs.join(file), dir.path().join(file)).unwrap();
    }
    let config = root().join("configs/eval/default.toml");
    let args = [
        "eval",
        "--config",
        config.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ];
    let output = kvpress(&args);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("holds 3960 rows without a fingerprint")
            && stderr(&output).contains("pass --trust-unfingerprinted"),
        "{}",
        stderr(&output)
    );
    let output = kvpress(&[&args[..], &["--trust-unfingerprinted"]].concat());
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("10200 of 10200 rows already in"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("table.md")).unwrap(),
        std::fs::read_to_string(docs.join("table.md")).unwrap(),
        "the table of the committed rows is unchanged"
    );
    assert_eq!(
        std::fs::read(dir.path().join("results.jsonl")).unwrap(),
        std::fs::read(docs.join("results.jsonl")).unwrap(),
        "the rows are not rewritten"
    );
}
