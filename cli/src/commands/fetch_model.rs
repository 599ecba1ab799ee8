//! `kvpress fetch-model`: downloads the default model and prints where it is. A model file
//! already there is checked (size and SHA-256, as `scripts/fetch-model.sh` does); one that
//! differs is reported and fetched again.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kvpress::default_model;

/// Bytes of the default model file.
pub const EXPECTED_SIZE: u64 = 98_362_432;
/// SHA-256 of the default model file (lowercase hex).
pub const EXPECTED_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Fetches the default model (if missing or not the expected file) and prints its path.
pub fn run() -> Result<()> {
    let home = default_model::kvpress_home();
    if home.exists() && !home.is_dir() {
        bail!(
            "KVPRESS_HOME {} is a file, not a folder: set KVPRESS_HOME to a folder (or unset it \
             for ~/.cache/kvpress)",
            home.display()
        );
    }
    let path = default_model::path();
    if path.exists() && !path.is_file() {
        bail!(
            "{} exists but is not a file; remove it and run this again",
            path.display()
        );
    }
    if path.is_file() {
        match problem_with(&path)? {
            None => {
                println!("{}", path.display());
                return Ok(());
            }
            Some(problem) => {
                eprintln!(
                    "fetch-model: {} is not the expected model: {problem}; fetching it again",
                    path.display()
                );
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
    }
    let path = default_model::fetch()?;
    if let Some(problem) = problem_with(&path)? {
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        bail!("the downloaded model is not the expected file ({problem}); it was removed");
    }
    println!("{}", path.display());
    Ok(())
}

/// What is wrong with the model file at `path`; `None` when it is the expected file.
pub fn problem_with(path: &Path) -> Result<Option<String>> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if size != EXPECTED_SIZE {
        return Ok(Some(format!(
            "its size is {size} bytes, expected {EXPECTED_SIZE} (a truncated or interrupted \
             download?)"
        )));
    }
    let sum = sha256_hex(path)?;
    if sum != EXPECTED_SHA256 {
        return Ok(Some(format!(
            "its SHA-256 is {sum}, expected {EXPECTED_SHA256} (a corrupted or different file?)"
        )));
    }
    Ok(None)
}

/// The SHA-256 of the file at `path`, lowercase hex.
fn sha256_hex(path: &Path) -> Result<String> {
    Ok(kvpress::models::file_sha256(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_corrupted_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, b"GGUF").unwrap();
        let problem = problem_with(&path).unwrap().unwrap();
        assert!(problem.contains("its size is 4 bytes"), "{problem}");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_hex(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
