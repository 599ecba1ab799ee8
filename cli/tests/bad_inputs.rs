//! Bad inputs, one case a line: the `kvpress` binary run with arguments (and environment
//! variables, and files it reads) that are wrong must fail with a message naming the problem
//! and what is valid, never with a panic; some inputs that look odd but are valid must work and
//! say what they did.
//!
//! In arguments, environment values, file names and expected phrases, `{dir}` is a fresh
//! folder holding the case's files and `{repo}` the repository. To add a case, add a line to
//! [`CASES`]: most fail before the model is loaded, so they take milliseconds.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A file a case creates in `{dir}` before running.
#[derive(Clone, Copy)]
enum File {
    /// A text file.
    Text(&'static str),
    /// A text repeated this many times.
    Repeat(&'static str, usize),
    /// An empty folder.
    Folder,
    /// The default model, its maximum positions (`llama.context_length`) set to this: a cheap
    /// way to reach the position limit.
    ModelWithPositions(u32),
}

/// What a case must do.
#[derive(Clone, Copy)]
enum Expect {
    /// Exit with a failure (not a panic) and every phrase on stderr.
    Fails(&'static [&'static str]),
    /// Succeed with every phrase in stdout or stderr.
    Succeeds(&'static [&'static str]),
}

/// One run of the binary.
#[derive(Clone, Copy)]
struct Case {
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    files: &'static [(&'static str, File)],
    expect: Expect,
}

const fn fails(args: &'static [&'static str], phrases: &'static [&'static str]) -> Case {
    Case {
        args,
        env: &[],
        files: &[],
        expect: Expect::Fails(phrases),
    }
}

const fn succeeds(args: &'static [&'static str], phrases: &'static [&'static str]) -> Case {
    Case {
        expect: Expect::Succeeds(phrases),
        ..fails(args, phrases)
    }
}

impl Case {
    const fn env(self, env: &'static [(&'static str, &'static str)]) -> Self {
        Case { env, ..self }
    }

    const fn files(self, files: &'static [(&'static str, File)]) -> Self {
        Case { files, ..self }
    }
}

/// The files cases create, one a line.
#[rustfmt::skip]
mod files {
    use super::File;

    pub const CTX: (&str, File) = ("ctx.txt", File::Text("The launch code is 2718. Keep it safe."));
    pub const KNORM: (&str, File) = ("knorm.toml", File::Text("press = \"knorm\"\ncompression_ratio = 0.5\n"));
    pub const NAN: (&str, File) = ("nan.toml", File::Text("press = \"knorm\"\ncompression_ratio = nan\n"));
    pub const INF: (&str, File) = ("inf.toml", File::Text("press = \"knorm\"\ncompression_ratio = inf\n"));
    pub const BIG: (&str, File) = ("big.toml", File::Text("press = \"snapkv\"\nwindow_size = 99999999999999999999\n"));
    pub const NEG: (&str, File) = ("neg.toml", File::Text("press = \"snapkv\"\nwindow_size = -1\n"));
    pub const ARRAY: (&str, File) = ("array.json", File::Text("[{\"press\": \"knorm\"}]"));
    pub const EMPTY: (&str, File) = ("empty.toml", File::Text(""));
    pub const TOML_IN_JSON: (&str, File) = ("knorm.json", File::Text("press = \"knorm\"\ncompression_ratio = 0.5\n"));
    pub const JSON_IN_TOML: (&str, File) = ("json.toml", File::Text("{\"press\": \"knorm\", \"compression_ratio\": 0.5}"));
    pub const TXT_PRESS: (&str, File) = ("knorm.txt", File::Text("press = \"knorm\"\n"));
    pub const NUMBER_NAME: (&str, File) = ("number.toml", File::Text("press = 3\n"));
    pub const NO_NAME: (&str, File) = ("noname.toml", File::Text("compression_ratio = 0.5\n"));
    pub const UNKNOWN: (&str, File) = ("unknown.toml", File::Text("press = \"snap_kv\"\n"));
    pub const FIELD: (&str, File) = ("field.toml", File::Text("press = \"knorm\"\nratio = 0.5\n"));
    pub const NESTED: (&str, File) = ("nested.toml", File::Text("press = \"key_rerotation\"\n[inner]\npress = \"knorm\"\ncompression_ratio = \"half\"\n"));
    pub const PROMPT: (&str, File) = ("prompt.json", File::Text("{\"context\": \"The code is 7.\", \"question\": \" What is the code?\"}"));
    pub const NOT_A_LIB: (&str, File) = ("libfake.so", File::Text("not a shared library"));
    pub const SHORT_MODEL: (&str, File) = ("short.gguf", File::ModelWithPositions(64));
    pub const FILLER: (&str, File) = ("filler.txt", File::Repeat("The grass is green. The sky is blue. ", 2));

    /// Arguments shared by many cases.
    pub const RUN: &[&str] = &["run", "--context", "{dir}/ctx.txt", "--question", "What is the code?"];
}
use files::*;

#[rustfmt::skip]
const CASES: &[Case] = &[
    // 1. Negative numbers and out-of-range values of every numeric option.
    fails(&["generate", "--prompt", "hi", "--max-new-tokens", "-1"], &["invalid value '-1' for '--max-new-tokens", "at least 1"]),
    fails(&["generate", "--prompt", "hi", "--max-new-tokens", "0"], &["0 is too small", "at least 1"]),
    fails(&["generate", "--prompt", "hi", "--max-new-tokens", "many"], &["not a whole number"]),
    fails(&["generate", "--prompt", "hi", "--max-new-tokens", "99999999999999999999999"], &["too large"]),
    fails(&["generate", "--prompt", "hi", "--temperature", "-1"], &["invalid value '-1' for '--temperature", "temperature must be positive (or 0"]),
    fails(&["generate", "--prompt", "hi", "--temperature", "nan"], &["temperature must be positive", "finite"]),
    fails(&["generate", "--prompt", "hi", "--temperature", "inf"], &["temperature must be positive"]),
    fails(&["generate", "--prompt", "hi", "--temperature", "0.5", "--top-p", "1.5"], &["1.5 is outside (0, 1]"]),
    fails(&["generate", "--prompt", "hi", "--temperature", "0.5", "--top-p", "0"], &["outside (0, 1]"]),
    fails(&["generate", "--prompt", "hi", "--temperature", "0.5", "--top-p", "-0.5"], &["invalid value '-0.5' for '--top-p", "outside (0, 1]"]),
    fails(&["generate", "--prompt", "hi", "--temperature", "1", "--seed", "-3"], &["invalid value '-3' for '--seed", "it is negative", "0 to 18446744073709551615"]),
    fails(&["generate", "--prompt", "hi", "--seed", "3"], &["--temperature"]),
    fails(&["generate", "--prompt", "hi", "--top-p", "0.9"], &["--temperature"]),
    fails(&["generate", "--prompt", "  "], &["--prompt is empty"]),
    fails(&["run", "--context", "{dir}/ctx.txt", "--question", "q", "--max-new-tokens", "-1"], &["invalid value '-1' for '--max-new-tokens", "at least 1"]).files(&[CTX]),
    fails(&["run", "--context", "{dir}/ctx.txt", "--question", "q", "--max-new-tokens", "0"], &["at least 1"]).files(&[CTX]),
    fails(&["fidelity", "--text", "{dir}/ctx.txt", "--press", "{dir}/knorm.toml", "--continuation", "-5"], &["invalid value '-5' for '--continuation", "at least 1"]).files(&[CTX, KNORM]),
    fails(&["fidelity", "--text", "{dir}/ctx.txt", "--press", "{dir}/knorm.toml", "--continuation", "0"], &["at least 1"]).files(&[CTX, KNORM]),
    fails(&["bench", "--decode-tokens", "0"], &["invalid value '0' for '--decode-tokens", "at least 1"]),
    fails(&["bench", "--decode-tokens", "-1"], &["it is negative"]),
    fails(&["bench", "--repeats", "0"], &["'--repeats", "at least 1"]),
    fails(&["bench", "--repeats", "-2"], &["it is negative"]),
    fails(&["bench", "--context", "-1"], &["invalid value '-1' for '--context", "at least 1"]),
    fails(&["bench", "--context", "0"], &["at least 1"]),
    fails(&["bench", "--context", "1024,0"], &["0 is too small"]),
    fails(&["bench", "--generate", "0", "--press", "{dir}/knorm.toml"], &["'--generate", "at least 1"]).files(&[KNORM]),
    fails(&["bench", "--generate", "-5", "--press", "{dir}/knorm.toml"], &["it is negative"]).files(&[KNORM]),
    fails(&["bench", "--batch", "0", "--press", "{dir}/knorm.toml"], &["'--batch", "at least 1"]).files(&[KNORM]),
    fails(&["bench", "--batch", "-1", "--press", "{dir}/knorm.toml"], &["it is negative"]).files(&[KNORM]),
    fails(&["eval", "--config", "{dir}/eval.toml", "--jobs", "-1"], &["invalid value '-1' for '--jobs"]),
    // bench modes that would measure nothing or ignore an option.
    fails(&["bench", "--generate", "10"], &["--press"]),
    fails(&["bench", "--batch", "2"], &["--press"]),
    fails(&["bench", "--append-cost", "--press", "{dir}/knorm.toml"], &["cannot be used with"]).files(&[KNORM]),
    fails(&["bench", "--append-cost", "--decode-tokens", "4"], &["cannot be used with"]),
    fails(&["bench", "--generate", "10", "--batch", "2", "--press", "{dir}/knorm.toml"], &["cannot be used with"]).files(&[KNORM]),
    fails(&["bench", "--batch", "2", "--context", "128,256", "--press", "{dir}/knorm.toml"], &["one --context"]).files(&[KNORM]),
    fails(&["bench", "--context", "9000", "--repeats", "1"], &["--context 9000", "more than the model's 8192"]),
    fails(&["bench", "--generate", "9000", "--press", "{repo}/configs/presses/decoding_snapkv.toml"], &["--generate 9000 needs 9032 positions", "at most --generate 8160"]),
    // 2. Press configs: what is wrong, where, and what is valid (through every command).
    fails(&["fidelity", "--text", "{dir}/ctx.txt", "--press", "{dir}/nan.toml"], &["nan.toml", "field `compression_ratio` (line 2) is nan", "finite"]).files(&[CTX, NAN]),
    fails(&["inspect", "--context", "{dir}/ctx.txt", "--press", "{dir}/inf.toml", "--out", "{dir}/out"], &["field `compression_ratio` (line 2) is inf"]).files(&[CTX, INF]),
    fails(&["fidelity", "--text", "{dir}/ctx.txt", "--press", "{dir}/big.toml"], &["not valid TOML (line 2)", "does not fit in a 64-bit integer"]).files(&[CTX, BIG]),
    fails(&["fidelity", "--text", "{dir}/ctx.txt", "--press", "{dir}/neg.toml"], &["press `snapkv`, field `window_size` (line 2)", "usize"]).files(&[CTX, NEG]),
    fails(&["fidelity", "--text", "{dir}/ctx.txt", "--press", "{dir}/array.json"], &["must be a table (TOML) or object (JSON) with a `press` field", "found an array", "knorm"]).files(&[CTX, ARRAY]),
    fails(&["fidelity", "--text", "{dir}/ctx.txt", "--press", "{dir}/empty.toml"], &["the config is empty", "`press` field"]).files(&[CTX, EMPTY]),
    fails(&["fidelity", "--text", "{dir}/ctx.txt", "--press", "{dir}/knorm.json"], &["named .json but holds TOML", "rename it to .toml"]).files(&[CTX, TOML_IN_JSON]),
    fails(&["fidelity", "--text", "{dir}/ctx.txt", "--press", "{dir}/json.toml"], &["named .toml but holds JSON", "rename it to .json"]).files(&[CTX, JSON_IN_TOML]),
    fails(&["fidelity", "--text", "{dir}/ctx.txt", "--press", "{dir}/knorm.txt"], &["must end in .json or .toml", "not .txt"]).files(&[CTX, TXT_PRESS]),
    fails(&["fidelity", "--text", "{dir}/ctx.txt", "--press", "{dir}/number.toml"], &["\"press\" must be a press name", "knorm"]).files(&[CTX, NUMBER_NAME]),
    fails(&["fidelity", "--text", "{dir}/ctx.txt", "--press", "{dir}/noname.toml"], &["missing field `press`", "knorm"]).files(&[CTX, NO_NAME]),
    fails(&["inspect", "--context", "{dir}/ctx.txt", "--press", "{dir}/unknown.toml", "--out", "{dir}/out"], &["unknown press `snap_kv`; registered presses are:"]).files(&[CTX, UNKNOWN]),
    fails(&["inspect", "--context", "{dir}/ctx.txt", "--press", "{dir}/field.toml", "--out", "{dir}/out"], &["field `ratio` (line 2)", "unknown field `ratio`", "compression_ratio"]).files(&[CTX, FIELD]),
    fails(&["inspect", "--context", "{dir}/ctx.txt", "--press", "{dir}/nested.toml", "--out", "{dir}/out"], &["press `knorm`, field `inner.compression_ratio`", "f64"]).files(&[CTX, NESTED]),
    fails(&["run", "--context", "{dir}/ctx.txt", "--question", "q", "--press", "{dir}/nan.toml"], &["is nan"]).files(&[CTX, NAN]),
    fails(&["compress", "--context", "{dir}/ctx.txt", "--press", "{dir}/array.json", "--out", "{dir}/c.kvp"], &["with a `press` field"]).files(&[CTX, ARRAY]),
    fails(&["compress", "--context", "{dir}/ctx.txt", "--press", "{dir}/nan.toml", "--out", "{dir}/c.kvp"], &["is nan"]).files(&[CTX, NAN]),
    fails(&["trace", "--prompt", "{dir}/prompt.json", "--press", "{dir}/empty.toml", "--out", "{dir}/t.json"], &["the config is empty"]).files(&[PROMPT, EMPTY]),
    fails(&["bench", "--press", "{dir}/unknown.toml", "--context", "64"], &["unknown press `snap_kv`"]).files(&[UNKNOWN]),
    fails(&["generate", "--prompt", "hi", "--press", "{dir}/knorm.json"], &["rename it to .toml"]).files(&[TOML_IN_JSON]),
    fails(&["fidelity", "--text", "{dir}/ctx.txt", "--press", "{dir}/missing.toml"], &["cannot read {dir}/missing.toml"]).files(&[CTX]),
    // 3. File errors name the path and what was done.
    fails(RUN, &["cannot read {dir}/ctx.txt", "No such file"]),
    fails(&["run", "--context", "{dir}/folder", "--question", "q"], &["cannot read {dir}/folder"]).files(&[("folder", File::Folder)]),
    fails(&["fidelity", "--text", "{dir}/none.txt", "--press", "{dir}/knorm.toml"], &["cannot read {dir}/none.txt"]).files(&[KNORM]),
    fails(&["inspect", "--context", "{dir}/none.txt", "--press", "{dir}/knorm.toml"], &["cannot read {dir}/none.txt"]).files(&[KNORM]),
    fails(&["compress", "--context", "{dir}/ctx.txt", "--press", "{dir}/none.toml", "--out", "{dir}/c.kvp"], &["{dir}/none.toml"]).files(&[CTX]),
    fails(&["trace", "--prompt", "{dir}/none.json", "--out", "{dir}/t.json"], &["{dir}/none.json"]),
    fails(&["eval", "--config", "{dir}/none.toml"], &["{dir}/none.toml"]),
    fails(&["generate", "--prompt", "hi", "--model", "{dir}/none.gguf"], &["{dir}/none.gguf"]),
    // 4. Output paths are checked before any work.
    fails(&["bench", "--json", "{dir}/missing/rows.json"], &["--json {dir}/missing/rows.json", "the folder {dir}/missing does not exist"]),
    fails(&["bench", "--json", "{dir}/folder"], &["is a folder"]).files(&[("folder", File::Folder)]),
    fails(&["bench", "--append-cost", "--context", "64", "--json", "{dir}/missing/rows.json"], &["does not exist"]),
    fails(&["inspect", "--context", "{dir}/ctx.txt", "--press", "{dir}/knorm.toml", "--out", "{dir}/ctx.txt"], &["--out {dir}/ctx.txt: is a file, not a folder"]).files(&[CTX, KNORM]),
    fails(&["inspect", "--context", "{dir}/ctx.txt", "--press", "{dir}/knorm.toml", "--out", "{dir}"], &["{dir}/kept.svg", "is a folder"]).files(&[CTX, KNORM, ("kept.svg", File::Folder)]),
    succeeds(&["bench", "--append-cost", "--context", "64", "--json", "{dir}/rows.json"], &["| 64 |"]),
    // 5. Environment variables, checked at start.
    fails(&["presses"], &["RAYON_NUM_THREADS=0 is not valid", "from 1 to"]).env(&[("RAYON_NUM_THREADS", "0")]),
    fails(&["presses"], &["RAYON_NUM_THREADS=\"four\" is not a number of threads"]).env(&[("RAYON_NUM_THREADS", "four")]),
    fails(&["presses"], &["RAYON_NUM_THREADS=\"-1\" is not a number of threads"]).env(&[("RAYON_NUM_THREADS", "-1")]),
    fails(&["generate", "--prompt", "hi"], &["RAYON_NUM_THREADS=100000 is too large", "4 x the"]).env(&[("RAYON_NUM_THREADS", "100000")]),
    fails(&["presses"], &["KVPRESS_BLAS=\"yes\" is not valid", "auto", "off or 0"]).env(&[("KVPRESS_BLAS", "yes")]),
    fails(&["bench", "--context", "64"], &["KVPRESS_BLAS=\"openblas\" is not valid"]).env(&[("KVPRESS_BLAS", "openblas")]),
    fails(&["presses"], &["KVPRESS_BLAS_LIB=/nonexistent/libopenblas.so.0: no such file"]).env(&[("KVPRESS_BLAS_LIB", "/nonexistent/libopenblas.so.0")]),
    fails(&["presses"], &["KVPRESS_BLAS_LIB={dir}/libfake.so: cannot load it as a shared library"]).env(&[("KVPRESS_BLAS_LIB", "{dir}/libfake.so")]).files(&[NOT_A_LIB]),
    succeeds(&["presses"], &["knorm"]).env(&[("KVPRESS_BLAS", "off"), ("KVPRESS_BLAS_LIB", "/nonexistent/lib.so")]),
    succeeds(&["presses"], &["snapkv"]).env(&[("RAYON_NUM_THREADS", "1"), ("KVPRESS_BLAS", "auto")]),
    // 7. Answers say why they stopped; prompts that leave too little room are warned about.
    succeeds(&["generate", "--prompt", "Count to fifty.", "--max-new-tokens", "2"], &["answer stopped: the --max-new-tokens limit (2) was reached after 2 tokens"]),
    succeeds(&["generate", "--prompt", "Count from 1 to 100, separated by commas.", "--max-new-tokens", "300", "--model", "{dir}/short.gguf"], &["warning: the prompt (", "of the model's 64 positions", "answer stopped: the model's position limit (64) was reached after"]).files(&[SHORT_MODEL]),
    succeeds(&["run", "--context", "{dir}/filler.txt", "--question", "Repeat the text, ten times.", "--max-new-tokens", "300", "--model", "{dir}/short.gguf"], &["warning: the context (", "leaves room for", "answer stopped: the model's position limit (64) was reached after"]).files(&[FILLER, SHORT_MODEL]),
    succeeds(&["run", "--context", "{dir}/ctx.txt", "--question", "What is the code?", "--max-new-tokens", "1", "--compare", "--press", "{dir}/knorm.toml"], &["answer (full cache) stopped: the --max-new-tokens limit (1)", "answer (knorm) stopped"]).files(&[CTX, KNORM]),
    fails(&["run", "--context", "{dir}/long.txt", "--question", "q", "--model", "{dir}/short.gguf"], &["more than the model's 64"]).files(&[("long.txt", File::Repeat("The grass is green. ", 40)), SHORT_MODEL]),
    fails(&["generate", "--raw", "--prompt", "The grass is green. The grass is green. The grass is green. The grass is green. The grass is green. The grass is green. The grass is green. The grass is green. The grass is green. The grass is green. The grass is green. The grass is green. The grass is green.", "--model", "{dir}/short.gguf"], &["the prompt (", "more than the model's 64"]).files(&[SHORT_MODEL]),
];

#[test]
fn bad_inputs_fail_with_a_message_naming_the_problem() {
    assert!(CASES.len() >= 60, "{} cases", CASES.len());
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let repo = repo.canonicalize().unwrap();
    let mut failures = Vec::new();
    for (index, case) in CASES.iter().enumerate() {
        if let Err(failure) = run_case(case, &repo) {
            failures.push(format!("case {index} {:?}: {failure}", case.args));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Runs `case` in a fresh folder; `Err` says how it went wrong.
fn run_case(case: &Case, repo: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let fill = |text: &str| {
        text.replace("{dir}", &dir.path().to_string_lossy())
            .replace("{repo}", &repo.to_string_lossy())
    };
    for (name, file) in case.files {
        create(&dir.path().join(fill(name)), *file);
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvpress"));
    command.args(case.args.iter().map(|arg| fill(arg)));
    command
        .env_remove("RAYON_NUM_THREADS")
        .env_remove("KVPRESS_BLAS")
        .env_remove("KVPRESS_BLAS_LIB");
    for (name, value) in case.env {
        command.env(name, fill(value));
    }
    let output = command.output().expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("panicked") || stderr.contains("stack backtrace") {
        return Err(format!("panicked: {stderr}"));
    }
    let (phrases, text) = match case.expect {
        Expect::Fails(phrases) => {
            // clap exits with 2, the commands with 1; a signal or a panic (101) is a crash.
            match output.status.code() {
                Some(1 | 2) => {}
                other => return Err(format!("exit {other:?}, expected a failure: {stderr}")),
            }
            (phrases, stderr.into_owned())
        }
        Expect::Succeeds(phrases) => {
            if !output.status.success() {
                return Err(format!("failed ({}): {stderr}", output.status));
            }
            (phrases, format!("{stdout}\n{stderr}"))
        }
    };
    match phrases
        .iter()
        .map(|p| fill(p))
        .find(|p| !text.contains(p.as_str()))
    {
        Some(missing) => Err(format!("missing `{missing}` in:\n{text}")),
        None => Ok(()),
    }
}

/// Creates `file` at `path`.
fn create(path: &Path, file: File) {
    match file {
        File::Text(text) => std::fs::write(path, text).unwrap(),
        File::Repeat(text, n) => std::fs::write(path, text.repeat(n)).unwrap(),
        File::Folder => std::fs::create_dir_all(path).unwrap(),
        File::ModelWithPositions(positions) => {
            std::fs::write(path, model_with_positions(positions)).unwrap()
        }
    }
}

/// The default model's bytes with its `llama.context_length` (a u32 metadata value) replaced.
fn model_with_positions(positions: u32) -> Vec<u8> {
    let mut bytes = std::fs::read(kvpress::default_model::path()).expect("the default model");
    let key = b"llama.context_length";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the model names its context length")
        + key.len();
    assert_eq!(&bytes[at..at + 4], &4u32.to_le_bytes(), "a u32 value");
    bytes[at + 4..at + 8].copy_from_slice(&positions.to_le_bytes());
    bytes
}
