//! Output paths, checked before any work (so that a long run does not fail at its end for a
//! missing folder), and written with errors naming the path and the operation.

use std::fs::OpenOptions;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Checks that the file `path` (given as `option`) can be written: it is not a folder, its
/// folder exists, and a file can be created (or opened for writing) there. Leaves an existing
/// file as it is and removes the probe it creates.
pub fn check_output_file(option: &str, path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        bail!("{option} is empty: give the path of the file to write");
    }
    if path.is_dir() {
        bail!(
            "{option} {}: is a folder; give the path of a file to write",
            path.display()
        );
    }
    let parent = parent_of(path);
    if !parent.is_dir() {
        bail!(
            "{option} {}: the folder {} does not exist; create it first",
            path.display(),
            parent.display()
        );
    }
    if path.exists() {
        OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("{option}: cannot write {}", path.display()))?;
        return Ok(());
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("{option}: cannot create {}", path.display()))?;
    std::fs::remove_file(path)
        .with_context(|| format!("{option}: cannot remove the probe {}", path.display()))
}

/// Creates the folder `path` (given as `option`) if needed and checks that each of `files`
/// can be written in it.
pub fn prepare_output_dir(option: &str, path: &Path, files: &[&str]) -> Result<()> {
    if path.exists() && !path.is_dir() {
        bail!(
            "{option} {}: is a file, not a folder; give a folder to write into",
            path.display()
        );
    }
    std::fs::create_dir_all(path)
        .with_context(|| format!("{option}: cannot create the folder {}", path.display()))?;
    files
        .iter()
        .try_for_each(|file| check_output_file(option, &path.join(file)))
}

/// Writes `contents` to `path`; the error names the path.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

/// The folder `path` is in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_files_are_checked_before_work() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rows.json");
        check_output_file("--json", &file).unwrap();
        assert!(!file.exists(), "the probe is removed");
        std::fs::write(&file, "kept").unwrap();
        check_output_file("--json", &file).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept");
        let error = check_output_file("--json", dir.path()).unwrap_err();
        assert!(error.to_string().contains("is a folder"), "{error}");
        let missing = dir.path().join("no/such/rows.json");
        let error = check_output_file("--json", &missing).unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
    }

    #[test]
    fn output_folders_are_created_and_must_be_folders() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a/b");
        prepare_output_dir("--out", &out, &["x.svg"]).unwrap();
        assert!(out.is_dir());
        std::fs::create_dir(out.join("x.svg")).unwrap();
        let error = prepare_output_dir("--out", &out, &["x.svg"]).unwrap_err();
        assert!(error.to_string().contains("is a folder"), "{error}");
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let error = prepare_output_dir("--out", &file, &[]).unwrap_err();
        assert!(error.to_string().contains("not a folder"), "{error}");
    }
}
