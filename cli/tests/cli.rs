//! The `kvpress` binary as a user runs it: outputs, exit codes and error messages.

use std::path::PathBuf;
use std::process::{Command, Output};

fn kvpress(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvpress"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn prompt_file(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("prompt.json");
    let prompt = serde_json::json!({
        "context": "The launch code is 2718. Keep it safe.",
        "question": " What is the launch code?",
    });
    std::fs::write(&path, prompt.to_string()).unwrap();
    path
}

#[test]
fn trace_writes_the_fixture_fields() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("trace.json");
    let prompt = prompt_file(&dir);
    let output = kvpress(&[
        "trace",
        "--prompt",
        prompt.to_str().unwrap(),
        "--dtype",
        "f32",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for field in [
        "context_ids",
        "question_ids",
        "context_text",
        "question_text",
    ] {
        assert!(
            trace[field].is_array() || trace[field].is_string(),
            "missing {field}"
        );
    }
    let full = &trace["full"];
    assert_eq!(
        full["last_logits"].as_array().unwrap().len(),
        49152,
        "one logit per vocabulary entry"
    );
    for layer in ["0", "15", "29"] {
        let keys = full["keys_first4"][layer].as_array().unwrap();
        assert_eq!(keys.len(), 3, "three KV heads");
        assert_eq!(keys[0].as_array().unwrap().len(), 4, "four tokens");
        assert_eq!(keys[0][0].as_array().unwrap().len(), 64, "head dim");
        assert!(full["values_first4"][layer].is_array());
    }
    let answer = full["answer_ids"].as_array().unwrap();
    assert!(!answer.is_empty() && answer.len() <= 24);
}

#[test]
fn generate_streams_an_answer_and_reports_speed_and_cache_size() {
    let output = kvpress(&[
        "generate",
        "--prompt",
        "Say hello.",
        "--max-new-tokens",
        "8",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!String::from_utf8_lossy(&output.stdout).trim().is_empty());
    let report = stderr(&output);
    for needle in ["prefill:", "tokens/s", "ms/token", "KV cache:", "bytes"] {
        assert!(report.contains(needle), "missing `{needle}` in {report}");
    }
}

#[test]
fn bench_prints_a_table_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let output = kvpress(&[
        "bench",
        "--context",
        "32,64",
        "--decode-tokens",
        "2",
        "--repeats",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("| quantized | f32 | 32 |") && table.contains("| quantized | f32 | 64 |"),
        "{table}"
    );
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(
        rows[1]["kv_cache_bytes"].as_u64().unwrap() > rows[0]["kv_cache_bytes"].as_u64().unwrap()
    );
}

#[test]
fn bad_input_fails_with_a_message_naming_the_problem() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["generate", "--prompt", "hi", "--dtype", "q8"],
            "valid are quantized, f32, f16, bf16",
        ),
        (&["generate", "--prompt", ""], "--prompt is empty"),
        (
            &[
                "generate",
                "--prompt",
                "hi",
                "--model",
                "/nonexistent/model.gguf",
            ],
            "no such file",
        ),
        (
            &["generate", "--prompt", "hi", "--model", "Cargo.toml"],
            "not a readable GGUF file",
        ),
        (
            &["generate", "--prompt", "hi", "--temperature=-1"],
            "temperature must be positive",
        ),
    ];
    for (args, message) in cases {
        let output = kvpress(args);
        assert!(!output.status.success(), "{args:?} should fail");
        let err = stderr(&output);
        assert!(err.contains(message), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("stack backtrace"),
            "{args:?}: {err}"
        );
    }
}

fn repository_file(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn run_compresses_once_and_answers_each_question() {
    let output = kvpress(&[
        "run",
        "--context",
        &repository_file("data/needle-haystack.txt"),
        "--press",
        &repository_file("configs/presses/snapkv.toml"),
        "--question",
        "What is the special magic number for ocean mentioned in the provided text?",
        "--question",
        "What is the special magic number for ocean mentioned in the provided text?",
        "--max-new-tokens",
        "24",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The same question twice gives the same answer: the cache is rewound after each.
    let answers: Vec<&str> = stdout.lines().filter(|l| l.starts_with("A: ")).collect();
    assert_eq!(answers.len(), 2, "{stdout}");
    assert_eq!(answers[0], answers[1]);
    assert!(answers[0].contains("734"), "{stdout}");
    for needle in [
        "context: 1175 tokens",
        "kept 50.0%",
        "KV cache",
        "MiB ->",
        "compression",
    ] {
        assert!(stdout.contains(needle), "missing `{needle}` in {stdout}");
    }
}

#[test]
fn presses_lists_every_press_with_defaults() {
    let output = kvpress(&["presses"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let listing = String::from_utf8_lossy(&output.stdout);
    for name in [
        "snapkv:",
        "pyramidkv:",
        "expected_attention:",
        "criticalkv:",
        "knorm:",
        "streaming_llm:",
        "random:",
        "tova:",
        "observed_attention:",
        "keydiff:",
        "composed:",
        "per_layer:",
        "key_rerotation:",
        "chunk:",
        "no_press:",
    ] {
        assert!(listing.contains(name), "missing {name} in {listing}");
    }
    assert!(listing.contains("window_size = 64"), "{listing}");
}

#[test]
fn trace_records_what_a_press_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("trace.json");
    let prompt = dir.path().join("prompt.json");
    let context = std::fs::read_to_string(repository_file("data/needle-haystack.txt")).unwrap();
    std::fs::write(
        &prompt,
        serde_json::json!({"context": context, "question": "What is the number?"}).to_string(),
    )
    .unwrap();
    let output = kvpress(&[
        "trace",
        "--prompt",
        prompt.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--press",
        &repository_file("configs/presses/knorm.toml"),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let knorm = &trace["presses"]["knorm"];
    assert_eq!(
        knorm["kept"].as_array().unwrap().len(),
        30,
        "one entry per layer"
    );
    assert_eq!(knorm["kept"][0][0].as_array().unwrap().len(), 587);
    assert_eq!(knorm["scores"]["15"][2].as_array().unwrap().len(), 1175);
    assert_eq!(knorm["cache_lengths"][29], 587);
    let (kept, full) = (
        knorm["kv_bytes"].as_u64().unwrap(),
        knorm["kv_bytes_full"].as_u64().unwrap(),
    );
    assert_eq!(full, 30 * 2 * 3 * 64 * 4 * 1175, "K and V, all layers, f32");
    assert_eq!(kept, 30 * 2 * 3 * 64 * 4 * 587);
}

#[test]
fn bad_press_configs_fail_with_a_message_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "The launch code is 2718.").unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let unknown = write(
        "unknown.json",
        r#"{"press": "snap_kv", "compression_ratio": 0.5}"#,
    );
    let ratio = write("ratio.toml", "press = \"knorm\"\ncompression_ratio = 1.5\n");
    let field = write("field.toml", "press = \"snapkv\"\nwindow = 8\n");
    let snapkv = repository_file("configs/presses/snapkv.toml");
    let cases: [(&str, &str); 4] = [
        (&unknown, "unknown press `snap_kv`; registered presses are:"),
        (&ratio, "compression_ratio 1.5 is outside [0, 1)"),
        (&field, "unknown field `window`"),
        (&snapkv, "window_size = 64 must be smaller than the context"),
    ];
    for (press, message) in cases {
        let output = kvpress(&[
            "run",
            "--context",
            short.to_str().unwrap(),
            "--press",
            press,
            "--question",
            "What is the code?",
        ]);
        assert!(!output.status.success(), "{press} should fail");
        let err = stderr(&output);
        assert!(err.contains(message), "{press}: {err}");
        assert!(!err.contains("panicked"), "{press}: {err}");
    }
}

#[test]
fn compress_saves_a_context_that_run_load_answers_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ctx.kvp");
    let question = "What is the special magic number for ocean mentioned in the provided text?";
    let output = kvpress(&[
        "compress",
        "--context",
        &repository_file("data/needle-haystack.txt"),
        "--press",
        &repository_file("configs/presses/adakv_snapkv.toml"),
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("bytes (50.") && stdout.contains("kept 50.0%"),
        "{stdout}"
    );
    let loaded = kvpress(&[
        "run",
        "--load",
        file.to_str().unwrap(),
        "--question",
        question,
        "--max-new-tokens",
        "24",
    ]);
    assert!(loaded.status.success(), "{}", stderr(&loaded));
    let fresh = kvpress(&[
        "run",
        "--context",
        &repository_file("data/needle-haystack.txt"),
        "--press",
        &repository_file("configs/presses/adakv_snapkv.toml"),
        "--question",
        question,
        "--max-new-tokens",
        "24",
    ]);
    let answer = |out: &Output| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("A: "))
            .map(str::to_string)
    };
    assert_eq!(answer(&loaded), answer(&fresh));
    assert!(answer(&loaded).is_some());
    let both = kvpress(&[
        "run",
        "--load",
        file.to_str().unwrap(),
        "--context",
        "x.txt",
        "--question",
        "?",
    ]);
    assert!(!both.status.success());
    assert!(
        stderr(&both).contains("cannot be used with"),
        "{}",
        stderr(&both)
    );
}

#[test]
fn generate_runs_decode_time_compression() {
    let output = kvpress(&[
        "generate",
        "--prompt",
        "Tell me a story.",
        "--max-new-tokens",
        "40",
        "--press",
        &repository_file("configs/presses/decoding_snapkv.toml"),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("KV cache:"));
}

#[test]
fn inspect_and_eval_write_svg_and_png_figures() {
    let dir = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let inspect_dir = dir.path().join("inspect");
    let output = kvpress(&[
        "inspect",
        "--context",
        root.join("data/needle-haystack.txt").to_str().unwrap(),
        "--press",
        root.join("configs/presses/adakv_snapkv.toml")
            .to_str()
            .unwrap(),
        "--out",
        inspect_dir.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let config = dir.path().join("eval.toml");
    std::fs::write(
        &config,
        "tasks = [\"niah_single\"]\ncontext_lengths = [512]\nsamples = 2\n\
         compression_ratios = [0.5]\n\n[[presses]]\nname = \"knorm\"\nconfig = { press = \"knorm\" }\n",
    )
    .unwrap();
    let eval_dir = dir.path().join("eval");
    let output = kvpress(&[
        "eval",
        "--config",
        config.to_str().unwrap(),
        "--out",
        eval_dir.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("; prefill "),
        "{}",
        stderr(&output)
    );
    for path in [
        inspect_dir.join("budgets"),
        inspect_dir.join("kept"),
        eval_dir.join("plot_question_agnostic"),
    ] {
        let svg = std::fs::read_to_string(path.with_extension("svg")).unwrap();
        assert!(svg.starts_with("<svg"), "{}", path.display());
        let png = std::fs::read(path.with_extension("png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    }
    let table = std::fs::read_to_string(eval_dir.join("table.md")).unwrap();
    assert!(table.contains("| knorm |"), "{table}");

    // Two worker processes (one per sample: --jobs is capped at the samples and the cores)
    // compute the same rows into one results file.
    let workers_dir = dir.path().join("workers");
    let output = kvpress(&[
        "eval",
        "--config",
        config.to_str().unwrap(),
        "--out",
        workers_dir.to_str().unwrap(),
        "--jobs",
        "2",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let sorted_rows = |dir: &std::path::Path| {
        let mut rows: Vec<String> = std::fs::read_to_string(dir.join("results.jsonl"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(sorted_rows(&workers_dir), sorted_rows(&eval_dir));
    assert_eq!(
        std::fs::read_to_string(workers_dir.join("table.md")).unwrap(),
        table
    );
    let output = kvpress(&[
        "eval",
        "--config",
        config.to_str().unwrap(),
        "--shard",
        "2/2",
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("expected K/N with 0 <= K < N"),
        "{}",
        stderr(&output)
    );
}
