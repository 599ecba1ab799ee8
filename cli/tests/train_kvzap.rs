//! `kvpress train-kvzap` with the default model: it fits both surrogates on a local text, writes
//! them with their held-out figures, and `dms` around `kvzap` then compresses with them through
//! `run`; bad inputs are refused by name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kvpress::presses::kvzap::Surrogates;

fn kvpress(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvpress"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn repository_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn trained_surrogates_drive_dms() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kvzap.safetensors");
    let text = repository_file("data/needle-haystack.txt");
    let output = kvpress(&[
        "train-kvzap",
        "--text",
        text.to_str().unwrap(),
        "--sample-tokens",
        "256",
        "--tokens-per-sample",
        "64",
        "--test-fraction",
        "0.25",
        "--hidden-dim",
        "32",
        "--epochs",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(printed.contains("held-out R²"), "{printed}");
    let surrogates = Surrogates::read(&out).unwrap();
    let header = &surrogates.header;
    assert_eq!(
        (header.n_layers, header.n_kv_heads, header.hidden_size),
        (30, 3, 576)
    );
    // 1151 tokens: 4 samples of 256 (the 127-token tail is dropped), 1 held out.
    assert_eq!(
        header.fit["samples"],
        serde_json::json!({"train": 3, "test": 1})
    );
    assert_eq!(
        header.fit["rows"],
        serde_json::json!({"train": 192, "test": 64})
    );
    for kind in ["linear", "mlp"] {
        let r2 = header.fit["held_out"][kind]["r2"].as_f64().unwrap();
        assert!(r2.is_finite(), "{kind}: {r2}");
    }
    // The press scores with them: as dms's inner press, through `run`.
    let config = dir.path().join("dms_kvzap.toml");
    std::fs::write(
        &config,
        format!(
            "press = \"dms\"\nthreshold = -5.0\n[inner]\npress = \"kvzap\"\nmodel_type = \"linear\"\nkvzap_file = {:?}\n",
            out.to_str().unwrap()
        ),
    )
    .unwrap();
    let output = kvpress(&[
        "run",
        "--context",
        text.to_str().unwrap(),
        "--press",
        config.to_str().unwrap(),
        "--question",
        "What is the special magic number for ocean mentioned in the provided text?",
        "--max-new-tokens",
        "8",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn bad_inputs_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kvzap.safetensors");
    let text = repository_file("data/needle-haystack.txt");
    let text = text.to_str().unwrap();
    let out_arg = out.to_str().unwrap();
    for (args, phrase) in [
        (vec!["--sample-tokens", "4096"], "at least 2 are needed"),
        (vec!["--test-fraction", "1.5"], "--test-fraction"),
        (vec!["--lr", "0"], "--lr"),
        (vec!["--epochs", "0"], "epochs"),
    ] {
        let mut all = vec!["train-kvzap", "--text", text, "--out", out_arg];
        all.extend(args.iter().copied());
        let output = kvpress(&all);
        assert!(matches!(output.status.code(), Some(1 | 2)), "{args:?}");
        assert!(
            stderr(&output).contains(phrase),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    assert!(!out.exists(), "nothing written");
    // A surrogate file that is not one is refused when the press reads it.
    let bogus = dir.path().join("bogus.safetensors");
    std::fs::write(&bogus, b"not safetensors").unwrap();
    let config = dir.path().join("kvzap.toml");
    std::fs::write(
        &config,
        format!(
            "press = \"kvzap\"\ncompression_ratio = 0.5\nkvzap_file = {:?}\n",
            bogus.to_str().unwrap()
        ),
    )
    .unwrap();
    let output = kvpress(&[
        "run",
        "--context",
        text,
        "--press",
        config.to_str().unwrap(),
        "--question",
        "Hi?",
        "--max-new-tokens",
        "2",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("is not a usable surrogate file"),
        "{}",
        stderr(&output)
    );
}
