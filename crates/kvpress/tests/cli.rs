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
