//! `kvpress calibrate-queries` with the default model: it writes statistics that `qfilter` and
//! `expected_attention_stats` then compress with (through `run` and `fidelity`), its file
//! records where they came from, and every bad input, its own or a press's file, is refused
//! with a message naming the problem.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kvpress::presses::query_stats::file::{CalibratedTensors, StatsHeader, FORMAT_VERSION};
use kvpress::presses::query_stats::{ModelIdentity, ModelShape, QueryStatsFile};

fn kvpress(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvpress"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn repository_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The repository's press config `name`, with its statistics file set to `stats`.
fn config_for(dir: &Path, name: &str, stats: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repository_file(&format!("configs/presses/{name}.toml")))
        .unwrap()
        .replace(
            "\"query-stats.safetensors\"",
            &format!("{:?}", stats.to_str().unwrap()),
        );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn fails(args: &[&str], phrases: &[&str]) {
    let output = kvpress(args);
    // 1: refused by the command; 2: by the argument parser (never a panic's 101 or a signal).
    assert!(
        matches!(output.status.code(), Some(1 | 2)),
        "{args:?}: {:?} {}",
        output.status,
        stderr(&output)
    );
    let message = stderr(&output);
    for phrase in phrases {
        assert!(
            message.contains(phrase),
            "{args:?}: missing `{phrase}` in {message}"
        );
    }
}

#[test]
fn calibrated_statistics_drive_both_presses() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.safetensors");
    let text = repository_file("data/needle-haystack.txt");
    let output = kvpress(&[
        "calibrate-queries",
        "--text",
        text.to_str().unwrap(),
        "--max-tokens",
        "400",
        "--out",
        stats.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    // 1151 tokens as plain text (no chat template, no BOS for this model) in sequences of at
    // most 400 tokens, the first 4 of each left out.
    assert!(printed.contains("3 sequences, 1151 tokens"), "{printed}");
    assert!(
        printed.contains(&format!("{} queries per head", 1151 - 3 * 4)),
        "{printed}"
    );

    let file = QueryStatsFile::read(&stats).unwrap();
    let header = file.header.as_ref().unwrap();
    assert_eq!(
        header.shape,
        ModelShape {
            n_layers: 30,
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64
        }
    );
    assert_eq!(
        (header.n_sink, header.max_tokens, header.n_sequences),
        (4, 400, 3)
    );
    assert_eq!(header.texts.len(), 1);
    assert_eq!(header.texts[0].name, "needle-haystack.txt");
    assert_eq!(
        header.texts[0].sha256,
        kvpress::models::file_sha256(&text).unwrap()
    );
    let model = kvpress::default_model::require().unwrap();
    assert_eq!(
        header.model.sha256,
        kvpress::models::model_sha256(&model).unwrap()
    );
    file.check_model_sha256(&header.model.sha256).unwrap();
    assert!(file.check_model_sha256("another").is_err());

    for name in ["qfilter", "expected_attention_stats"] {
        let config = config_for(dir.path(), name, &stats);
        let output = kvpress(&[
            "run",
            "--context",
            text.to_str().unwrap(),
            "--press",
            config.to_str().unwrap(),
            "--question",
            "What is the special magic number for ocean mentioned in the provided text?",
            "--max-new-tokens",
            "4",
        ]);
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        assert!(
            stdout(&output).contains("kept 50.0%"),
            "{name}: {}",
            stdout(&output)
        );
    }
}

/// A statistics file of another layout than the default model's (4 layers, 4 heads, dim 8).
fn small_file(path: &Path) {
    let shape = ModelShape {
        n_layers: 4,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
    };
    let header = StatsHeader {
        format_version: FORMAT_VERSION,
        model: ModelIdentity {
            sha256: "0".repeat(64),
            name: "tiny".to_string(),
        },
        shape,
        n_sink: 4,
        max_tokens: 1000,
        n_sequences: 1,
        n_queries: 10,
        texts: Vec::new(),
        tensor_sha256: Default::default(),
    };
    let tensors = CalibratedTensors {
        query_mean: vec![0.1; 4 * 4 * 8],
        query_cov: (0..4 * 4 * 64)
            .map(|i| if i % 64 % 9 == 0 { 1.0 } else { 0.0 })
            .collect(),
        q_filters: vec![0.5; 4 * 2 * 8],
        rope_inv_freq: vec![1.0, 0.1, 0.01, 0.001],
    };
    let file = QueryStatsFile::calibrated(path, header, tensors).unwrap();
    std::fs::write(path, file.to_bytes().unwrap()).unwrap();
}

#[test]
fn bad_statistics_files_are_refused_when_the_press_runs() {
    let dir = tempfile::tempdir().unwrap();
    let text = repository_file("data/needle-haystack.txt");
    let text = text.to_str().unwrap();
    let missing = dir.path().join("missing.safetensors");
    let config = config_for(dir.path(), "qfilter", &missing);
    fails(
        &[
            "fidelity",
            "--text",
            text,
            "--press",
            config.to_str().unwrap(),
        ],
        &["missing.safetensors", "kvpress calibrate-queries"],
    );
    let other = dir.path().join("other.safetensors");
    small_file(&other);
    let config = config_for(dir.path(), "expected_attention_stats", &other);
    fails(
        &[
            "fidelity",
            "--text",
            text,
            "--press",
            config.to_str().unwrap(),
        ],
        &[
            "other.safetensors",
            "computed for another model",
            "4 layers, 4 query heads, 2 KV heads, head dim 8",
            "30 layers, 9 query heads, 3 KV heads, head dim 64",
        ],
    );
    let damaged = dir.path().join("damaged.safetensors");
    let mut bytes = std::fs::read(&other).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&damaged, bytes).unwrap();
    let config = config_for(dir.path(), "qfilter", &damaged);
    fails(
        &[
            "fidelity",
            "--text",
            text,
            "--press",
            config.to_str().unwrap(),
        ],
        &["damaged.safetensors", "does not match its checksum"],
    );
    let empty_path = dir.path().join("empty.toml");
    std::fs::write(
        &empty_path,
        "press = \"qfilter\"\ncompression_ratio = 0.5\n",
    )
    .unwrap();
    fails(
        &[
            "fidelity",
            "--text",
            text,
            "--press",
            empty_path.to_str().unwrap(),
        ],
        &["filters_file is required", "kvpress calibrate-queries"],
    );
}

#[test]
fn bad_calibration_inputs_are_refused_before_the_model_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stats.safetensors");
    let out = out.to_str().unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(
        &text,
        "Some calibration text, long enough to have a few tokens.",
    )
    .unwrap();
    let text = text.to_str().unwrap();
    let blank = dir.path().join("blank.txt");
    std::fs::write(&blank, " \n\n ").unwrap();
    let binary = dir.path().join("binary.txt");
    std::fs::write(&binary, [b'a', 0xff, 0xfe, b'b']).unwrap();

    fails(&["calibrate-queries", "--out", out], &["--text"]);
    fails(
        &[
            "calibrate-queries",
            "--text",
            "/no/such/file.txt",
            "--out",
            out,
        ],
        &["--text /no/such/file.txt", "cannot read it"],
    );
    fails(
        &[
            "calibrate-queries",
            "--text",
            blank.to_str().unwrap(),
            "--out",
            out,
        ],
        &["blank.txt", "empty"],
    );
    fails(
        &[
            "calibrate-queries",
            "--text",
            binary.to_str().unwrap(),
            "--out",
            out,
        ],
        &["binary.txt", "not UTF-8", "offset 1"],
    );
    fails(
        &[
            "calibrate-queries",
            "--text",
            text,
            "--n-sink",
            "8",
            "--max-tokens",
            "8",
            "--out",
            out,
        ],
        &["--max-tokens 8 must be larger than --n-sink 8"],
    );
    fails(
        &[
            "calibrate-queries",
            "--text",
            text,
            "--max-tokens",
            "1",
            "--out",
            out,
        ],
        &["at least 2"],
    );
    fails(
        &[
            "calibrate-queries",
            "--text",
            text,
            "--n-sink",
            "-1",
            "--out",
            out,
        ],
        &["it is negative"],
    );
    fails(
        &["calibrate-queries", "--text", text, "--out", text],
        &["is the same file as --text"],
    );
    fails(
        &[
            "calibrate-queries",
            "--text",
            text,
            "--max-tokens",
            "100000",
            "--out",
            out,
        ],
        &["--max-tokens 100000 is beyond the model's 8192 positions"],
    );
    // Too little text: 12 tokens with 11 sinks leave one query per head.
    let output = kvpress(&[
        "calibrate-queries",
        "--text",
        text,
        "--n-sink",
        "11",
        "--out",
        out,
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("a covariance needs at least 2"),
        "{}",
        stderr(&output)
    );
    assert!(!Path::new(out).exists(), "nothing written");
}
