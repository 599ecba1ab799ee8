//! Running a case: a fresh folder with the case's files, earlier commands that prepare it (e.g.
//! a saved context), an optional change to a file (damage), then the `kvpress` binary with the
//! case's arguments and environment, and the checks of what it must do.
//!
//! In arguments, environment values, file names, file texts and expected phrases, `{dir}` is the
//! case's folder and `{repo}` the repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A file a case creates in `{dir}` before running.
#[derive(Clone, Debug)]
pub enum File {
    /// A text file.
    Text(String),
    /// Bytes as they are (e.g. invalid UTF-8).
    Bytes(Vec<u8>),
    /// A text repeated this many times.
    Repeat(String, usize),
    /// An empty folder.
    Folder,
    /// The default model, its maximum positions (`llama.context_length`) set to this: a cheap
    /// way to reach the position limit.
    ModelWithPositions(u32),
    /// A copy of the default model.
    ModelCopy,
    /// The default model with one byte of its tensor data changed.
    ModelChanged,
    /// The first bytes of the default model.
    ModelTruncated(usize),
    /// A symbolic link to the default model.
    LinkToModel,
}

/// What a case must do.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Exit with a failure (exit 1 or 2, not a panic or a signal) and every phrase on stderr.
    Fails(Vec<String>),
    /// Succeed with every phrase in stdout or stderr.
    Succeeds(Vec<String>),
}

/// A change made to a file of the case's folder after the preparing commands, before the run.
pub type Mutation = fn(&Path);

/// A further check of a case that ran as expected: its folder and its stdout + stderr.
pub type Check = fn(&Path, &str) -> Result<(), String>;

/// One run of the binary.
#[derive(Clone, Debug)]
pub struct Case {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub files: Vec<(String, File)>,
    /// Commands run first, each of which must succeed.
    pub prepare: Vec<Vec<String>>,
    /// `(file, change)`: applied to `{dir}/file` after `prepare`.
    pub mutate: Option<(String, Mutation)>,
    pub expect: Expect,
    pub check: Option<Check>,
}

fn strings<S: AsRef<str>>(items: &[S]) -> Vec<String> {
    items.iter().map(|s| s.as_ref().to_string()).collect()
}

/// A case that must fail with every phrase of `phrases` on stderr.
pub fn fails<S: AsRef<str>>(args: &[S], phrases: &[&str]) -> Case {
    Case {
        args: strings(args),
        env: Vec::new(),
        files: Vec::new(),
        prepare: Vec::new(),
        mutate: None,
        expect: Expect::Fails(strings(phrases)),
        check: None,
    }
}

/// A case that must succeed with every phrase of `phrases` in stdout or stderr.
pub fn succeeds<S: AsRef<str>>(args: &[S], phrases: &[&str]) -> Case {
    Case {
        expect: Expect::Succeeds(strings(phrases)),
        ..fails(args, &[])
    }
}

impl Case {
    /// Environment variables to set.
    pub fn env(mut self, env: &[(&str, &str)]) -> Self {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    /// Files to create.
    pub fn files(mut self, files: impl IntoIterator<Item = (String, File)>) -> Self {
        self.files.extend(files);
        self
    }

    /// A command to run first (it must succeed).
    pub fn after<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.prepare.push(strings(args));
        self
    }

    /// A change to `{dir}/file` before the run.
    pub fn mutate(mut self, file: &str, change: Mutation) -> Self {
        self.mutate = Some((file.to_string(), change));
        self
    }

    /// A further check of the result.
    pub fn check(mut self, check: Check) -> Self {
        self.check = Some(check);
        self
    }
}

/// The repository.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository")
}

/// Runs every case, then fails listing each case that did not do what it must.
pub fn run_all(group: &str, cases: &[Case]) {
    let repo = repo();
    let failures: Vec<String> = cases
        .iter()
        .enumerate()
        .filter_map(|(index, case)| {
            run_case(case, &repo)
                .err()
                .map(|failure| format!("{group} case {index} {:?}: {failure}", case.args))
        })
        .collect();
    eprintln!(
        "{group}: {} cases, {} as expected",
        cases.len(),
        cases.len() - failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Runs `case` in a fresh folder; `Err` says how it went wrong.
fn run_case(case: &Case, repo: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let fill = |text: &str| {
        text.replace("{dir}", &dir.path().to_string_lossy())
            .replace("{repo}", &repo.to_string_lossy())
    };
    for (name, file) in &case.files {
        create(&dir.path().join(fill(name)), file, &fill);
    }
    for args in &case.prepare {
        let output = command(args, &case.env, &fill).output().expect("runs");
        if !output.status.success() {
            return Err(format!(
                "preparing {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    if let Some((file, change)) = &case.mutate {
        change(&dir.path().join(fill(file)));
    }
    let output = command(&case.args, &case.env, &fill)
        .output()
        .expect("the binary runs");
    let text = judge(&output, &case.expect, &fill)?;
    match case.check {
        Some(check) => check(dir.path(), &text),
        None => Ok(()),
    }
}

/// The `kvpress` command for `args`, with a clean environment but for `env`.
fn command(args: &[String], env: &[(String, String)], fill: &dyn Fn(&str) -> String) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvpress"));
    command.args(args.iter().map(|arg| fill(arg)));
    command
        .env_remove("RAYON_NUM_THREADS")
        .env_remove("KVPRESS_BLAS")
        .env_remove("KVPRESS_BLAS_LIB");
    for (name, value) in env {
        command.env(name, fill(value));
    }
    command
}

/// Whether `output` is what `expect` asks; `Ok` holds the output's text (stdout and stderr).
fn judge(
    output: &Output,
    expect: &Expect,
    fill: &dyn Fn(&str) -> String,
) -> Result<String, String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("panicked") || stderr.contains("stack backtrace") {
        return Err(format!("panicked: {stderr}"));
    }
    let (phrases, searched) = match expect {
        Expect::Fails(phrases) => {
            // clap exits with 2, the commands with 1; a signal or a panic (101) is a crash.
            match output.status.code() {
                Some(1 | 2) => {}
                other => return Err(format!("exit {other:?}, expected a failure: {stderr}")),
            }
            (phrases, stderr.to_string())
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
        .find(|p| !searched.contains(p.as_str()))
    {
        Some(missing) => Err(format!("missing `{missing}` in:\n{searched}")),
        None => Ok(format!("{stdout}\n{stderr}")),
    }
}

/// Creates `file` at `path`.
fn create(path: &Path, file: &File, fill: &dyn Fn(&str) -> String) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    match file {
        File::Text(text) => std::fs::write(path, fill(text)).unwrap(),
        File::Bytes(bytes) => std::fs::write(path, bytes).unwrap(),
        File::Repeat(text, n) => std::fs::write(path, text.repeat(*n)).unwrap(),
        File::Folder => std::fs::create_dir_all(path).unwrap(),
        File::ModelWithPositions(positions) => {
            std::fs::write(path, model_with_positions(*positions)).unwrap()
        }
        File::ModelCopy => std::fs::write(path, default_model()).unwrap(),
        File::ModelChanged => {
            let mut bytes = default_model();
            // A byte near the end: tensor data, not metadata.
            let at = bytes.len() - 1000;
            bytes[at] ^= 0x10;
            std::fs::write(path, bytes).unwrap()
        }
        File::ModelTruncated(n) => std::fs::write(path, &default_model()[..*n]).unwrap(),
        File::LinkToModel => {
            std::os::unix::fs::symlink(kvpress::default_model::path(), path).unwrap()
        }
    }
}

fn default_model() -> Vec<u8> {
    std::fs::read(kvpress::default_model::path()).expect("the default model")
}

/// The default model's bytes with its `llama.context_length` (a u32 metadata value) replaced.
fn model_with_positions(positions: u32) -> Vec<u8> {
    let mut bytes = default_model();
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
