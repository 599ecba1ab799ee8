//! What the grid refuses before any model is loaded: eval configs that would run something
//! other than what they say, dataset lines that would score nonsense, and results files whose
//! rows would count twice.

use std::path::{Path, PathBuf};

// Links every press crate, so that configs find the presses by name.
use kvpress as _;
use kvpress_eval::dataset::read_dataset;
use kvpress_eval::{read_results, report, Error, EvalConfig, LineProblem, RESULTS_FILE};

/// The fields every test config shares (before its `[[presses]]`).
const BASE: &str = "tasks = [\"niah_single\"]\ncontext_lengths = [512]\nsamples = 1\n";

fn refusal(text: &str) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eval.toml");
    std::fs::write(&path, text).unwrap();
    EvalConfig::from_file(&path).expect_err(text)
}

fn assert_field(text: &str, expected: &str) {
    let error = refusal(text);
    assert!(
        matches!(&error, Error::InvalidConfig { field, .. } if *field == expected),
        "{text}: {error:?}"
    );
}

fn knorm(name: &str) -> String {
    format!("[[presses]]\nname = \"{name}\"\nconfig = {{ press = \"knorm\" }}\n")
}

#[test]
fn context_lengths_and_counts_that_run_nothing_are_refused() {
    let ratios = "compression_ratios = [0.5]\npresses = []\n";
    let rest = |lengths: &str| {
        format!("tasks = [\"niah_single\"]\ncontext_lengths = {lengths}\nsamples = 1\n{ratios}")
    };
    for lengths in ["[0]", "[]", "[512, 512]", "[0, 512]"] {
        assert_field(&rest(lengths), "context_lengths");
    }
    let error = refusal(&rest("[0]"));
    assert!(format!("{error}").contains("context length 0"), "{error}");
    assert_field(
        &format!("tasks = [\"niah_single\"]\ncontext_lengths = [512]\nsamples = 0\n{ratios}"),
        "samples",
    );
    assert_field(
        &format!("tasks = []\ncontext_lengths = [512]\nsamples = 1\n{ratios}"),
        "tasks",
    );
    assert_field(
        &format!("context_lengths = [512]\nsamples = 1\n{ratios}"),
        "tasks",
    );
    assert_field(
        &format!(
            "tasks = [\"niah_single\", \"niah_single\"]\ncontext_lengths = [512]\nsamples = 1\n\
             {ratios}"
        ),
        "tasks",
    );
    assert_field(&format!("{BASE}{ratios}settings = []\n"), "settings");
    assert_field(
        &format!("{BASE}{ratios}settings = [\"question_aware\", \"question_aware\"]\n"),
        "settings",
    );
    assert_field(
        &format!("{BASE}{ratios}max_new_tokens = 0\n"),
        "max_new_tokens",
    );
    let error = refusal(&format!(
        "tasks = [\"niah\"]\ncontext_lengths = [512]\nsamples = 1\n{ratios}"
    ));
    assert!(
        matches!(&error, Error::UnknownTask { name, .. } if name == "niah"),
        "{error:?}"
    );
}

#[test]
fn ratios_outside_the_range_or_given_twice_are_refused() {
    for ratios in [
        "[]",
        "[nan]",
        "[-0.1]",
        "[1.0]",
        "[0.5, 1.5]",
        "[0.5, 0.5]",
        "[0.5, 0.5004]",
    ] {
        assert_field(
            &format!("{BASE}compression_ratios = {ratios}\n{}", knorm("k")),
            "compression_ratios",
        );
    }
    let error = refusal(&format!("{BASE}compression_ratios = []\npresses = []\n"));
    assert!(
        format!("{error}").contains("would drop every press"),
        "{error}"
    );
}

#[test]
fn presses_need_names_of_their_own_and_leave_the_ratio_to_the_grid() {
    let ratios = "compression_ratios = [0.5]\n";
    let error = refusal(&format!("{BASE}{ratios}{}{}", knorm("a"), knorm("a")));
    assert!(
        matches!(&error, Error::DuplicatePress { name } if name == "a"),
        "{error:?}"
    );
    assert!(format!("{error}").contains("`a`"), "{error}");
    assert_field(&format!("{BASE}{ratios}{}", knorm("full cache")), "presses");
    assert_field(&format!("{BASE}{ratios}{}", knorm(" ")), "presses");
    for (config, field) in [
        (
            "{ press = \"knorm\", compression_ratio = 0.3 }",
            "config.compression_ratio",
        ),
        (
            "{ press = \"adakv\", inner = { press = \"snapkv\", compression_ratio = 0.3 } }",
            "config.inner.compression_ratio",
        ),
        (
            "{ press = \"key_rerotation\", inner = { press = \"knorm\", compression_ratio = 0.3 } }",
            "config.inner.compression_ratio",
        ),
        (
            "{ press = \"duo_attention\", head_compression_ratio = 0.3 }",
            "config.head_compression_ratio",
        ),
    ] {
        let error = refusal(&format!(
            "{BASE}{ratios}[[presses]]\nname = \"p\"\nconfig = {config}\n"
        ));
        assert!(
            matches!(&error, Error::PressSetsRatio { press, field: f } if press == "p" && f == field),
            "{config}: {error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("the grid sets every press's ratio")
                && message.contains("remove the field"),
            "{message}"
        );
    }
    // DuoAttention's grid ratio is its share of streaming heads: the grid sets that field.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eval.toml");
    let duo = "[[presses]]\nname = \"duo\"\nconfig = { press = \"duo_attention\" }\n";
    std::fs::write(
        &path,
        format!("{BASE}compression_ratios = [0.25, 0.5]\n{duo}"),
    )
    .unwrap();
    EvalConfig::from_file(&path).unwrap();
    let set =
        kvpress_eval::config::with_ratio(&serde_json::json!({"press": "duo_attention"}), 0.25)
            .unwrap();
    assert_eq!(set["head_compression_ratio"], 0.25);
    // A press the grid cannot run at all is refused for that, whatever its fields.
    let error = refusal(&format!(
        "{BASE}{ratios}[[presses]]\nname = \"p\"\nconfig = {{ press = \"composed\", presses = \
         [{{ press = \"knorm\", compression_ratio = 0.3 }}] }}\n"
    ));
    assert!(
        format!("{error}")
            .contains("`composed` cannot run in `eval`: it sets its own compression ratios"),
        "{error}"
    );
}

#[test]
fn unknown_keys_are_refused_and_the_committed_configs_pass() {
    let ratios = "compression_ratios = [0.5]\n";
    for text in [
        format!("{BASE}{ratios}sample = 3\npresses = []\n"),
        format!("{BASE}{ratios}[[presses]]\nname = \"k\"\nconfig = {{ press = \"knorm\" }}\nratio = 1\n"),
    ] {
        let error = refusal(&text);
        assert!(matches!(error, Error::ConfigFile { .. }), "{error:?}");
        assert!(format!("{error}").contains("unknown field"), "{error}");
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for config in [
        "configs/eval/ci.toml",
        "configs/eval/default.toml",
        "configs/eval/catalogue.toml",
        "configs/eval/quantized.toml",
    ] {
        EvalConfig::from_file(&root.join(config)).unwrap_or_else(|e| panic!("{config}: {e}"));
    }
}

fn dataset(dir: &Path, lines: &[&[u8]]) -> PathBuf {
    let path = dir.join("data.jsonl");
    std::fs::write(&path, lines.join(&b'\n')).unwrap();
    path
}

const GOOD: &[u8] =
    br#"{"context": "The code is 42.", "question": "What is the code?", "answer": "42"}"#;

#[test]
fn empty_answers_are_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let lines: [(&[u8], usize); 5] = [
        (br#"{"context": "c", "question": "q?", "answer": ""}"#, 0),
        (br#"{"context": "c", "question": "q?", "answer": "  "}"#, 0),
        (br#"{"context": "c", "question": "q?", "answer": []}"#, 0),
        (
            br#"{"context": "c", "question": "q?", "answer": ["x", ""]}"#,
            0,
        ),
        (
            br#"{"context": "c", "questions": ["a?", "b?"], "answers": [["x"], []]}"#,
            1,
        ),
    ];
    for (line, question) in lines {
        let path = dataset(dir.path(), &[GOOD, line]);
        let error = read_dataset(&path, false).unwrap_err();
        assert!(
            matches!(
                &error,
                Error::DatasetLine { line: 2, problem: LineProblem::EmptyAnswer { question: q }, .. }
                    if *q == question
            ),
            "{}: {error:?}",
            String::from_utf8_lossy(line)
        );
    }
    let path = dataset(
        dir.path(),
        &[GOOD, br#"{"context": "c", "questions": [], "answers": []}"#],
    );
    let error = read_dataset(&path, false).unwrap_err();
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
}

#[test]
fn a_line_that_is_not_utf8_is_one_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dataset(
        dir.path(),
        &[
            GOOD,
            b"{\"context\": \"caf\xe9\", \"question\": \"q\", \"answer\": \"a\"}",
            b"",
            GOOD,
        ],
    );
    let error = read_dataset(&path, false).unwrap_err();
    assert!(
        matches!(
            &error,
            Error::DatasetLine {
                line: 2,
                problem: LineProblem::NotUtf8 { column: 17 },
                ..
            }
        ),
        "{error:?}"
    );
    let message = format!("{error:#}");
    assert!(
        message.contains("data.jsonl:2: not UTF-8") && message.contains("--skip-bad"),
        "{message}"
    );
    let read = read_dataset(&path, true).unwrap();
    let lines: Vec<usize> = read.samples.iter().map(|(index, _)| *index).collect();
    assert_eq!(lines, vec![0, 3], "the lines around it read");
    assert_eq!(read.skipped.len(), 1);
    assert_eq!(read.skipped[0].line, 2);
    // Windows line ends are line ends.
    let path = dataset(dir.path(), &[&[GOOD, b"\r"].concat(), GOOD]);
    assert_eq!(read_dataset(&path, false).unwrap().samples.len(), 2);
}

const ROW: &str = r#"{"task":"niah_single","setting":"question_agnostic","context_length":512,"sample":0,"question":0,"press":"knorm","compression_ratio":0.5,"score":1.0,"answer":" 42","context_tokens":500}"#;

#[test]
fn a_row_repeated_counts_once_and_conflicting_rows_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(RESULTS_FILE);
    let other = ROW
        .replace(r#""sample":0"#, r#""sample":1"#)
        .replace("1.0", "0.0");
    std::fs::write(&path, format!("{ROW}\n{other}\n{ROW}\n")).unwrap();
    let rows = read_results(dir.path()).unwrap();
    assert_eq!(rows.len(), 2, "the repeated line is one row");
    let table = report::markdown(&rows);
    assert!(table.contains("| knorm | 0.500 | 0.50 | 0.50 |"), "{table}");

    let conflicting = ROW.replace(r#""score":1.0"#, r#""score":0.0"#);
    std::fs::write(&path, format!("{ROW}\n{other}\n{conflicting}\n")).unwrap();
    let error = read_results(dir.path()).unwrap_err();
    assert!(
        matches!(
            &error,
            Error::ConflictingRows {
                line: 3,
                first_line: 1,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        format!("{error}").contains("niah_single, question_agnostic, 512 tokens, sample 0"),
        "{error}"
    );
}

#[test]
fn a_results_line_that_is_not_utf8_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let other = ROW.replace(r#""sample":0"#, r#""sample":1"#);
    let bad: Vec<u8> = ROW
        .replace(" 42", " 4~")
        .bytes()
        .map(|b| if b == b'~' { 0xff } else { b })
        .collect();
    let bytes = [ROW.as_bytes(), b"\n", &bad, b"\n", other.as_bytes(), b"\n"].concat();
    std::fs::write(dir.path().join(RESULTS_FILE), bytes).unwrap();
    let error = read_results(dir.path()).unwrap_err();
    assert!(
        matches!(error, Error::ResultsLine { line: 2, .. }),
        "{error:?}"
    );
    assert!(format!("{error}").contains("results.jsonl:2:"), "{error}");
}
