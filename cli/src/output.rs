//! Output paths, checked before any work (so that a long run does not fail at its end for a
//! missing folder, and never overwrites one of its own inputs), and written atomically (a file
//! is either the old one or the whole new one), with errors naming the path and the operation.
//!
//! An output is refused when it is the same file as an input (under any spelling, through a
//! symbolic link or a hard link), when it is a folder, or when its folder does not exist.

use std::fs::OpenOptions;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// An input of a command: its option and path (e.g. `("--model", path)`).
pub type Input<'a> = (&'a str, &'a Path);

/// Whether `a` and `b` name one existing file: the same canonical path, or (on Unix) the same
/// device and inode, which also catches hard links.
fn same_file(a: &Path, b: &Path) -> bool {
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        if a == b {
            return true;
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return a.dev() == b.dev() && a.ino() == b.ino();
        }
    }
    false
}

/// Refuses writing `path` (given as `option`) when it is one of `inputs`.
fn check_not_an_input(option: &str, path: &Path, inputs: &[Input<'_>]) -> Result<()> {
    if let Some((flag, input)) = inputs.iter().find(|(_, input)| same_file(path, input)) {
        bail!(
            "{option} {} is the same file as {flag} {}: writing it would destroy the input; \
             choose another {option}",
            path.display(),
            input.display()
        );
    }
    Ok(())
}

/// Checks that the file `path` (given as `option`) can be written: it is not one of `inputs`,
/// not a folder, its folder exists, and a file can be created (or opened for writing) there.
/// Leaves an existing file as it is and removes the probe it creates.
pub fn check_output_file(option: &str, path: &Path, inputs: &[Input<'_>]) -> Result<()> {
    if path.as_os_str().is_empty() {
        bail!("{option} is empty: give the path of the file to write");
    }
    check_not_an_input(option, path, inputs)?;
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
/// can be written in it (and is none of `inputs`).
pub fn prepare_output_dir(
    option: &str,
    path: &Path,
    files: &[&str],
    inputs: &[Input<'_>],
) -> Result<()> {
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
        .try_for_each(|file| check_output_file(option, &path.join(file), inputs))
}

/// Writes `contents` to `path` atomically (a temporary file renamed onto it); the error names
/// the path.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    kvpress::hooks::context_file::atomic::write_atomically(path, contents.as_ref())
        .with_context(|| format!("cannot write {}", path.display()))
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
        check_output_file("--json", &file, &[]).unwrap();
        assert!(!file.exists(), "the probe is removed");
        std::fs::write(&file, "kept").unwrap();
        check_output_file("--json", &file, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept");
        let error = check_output_file("--json", dir.path(), &[]).unwrap_err();
        assert!(error.to_string().contains("is a folder"), "{error}");
        let missing = dir.path().join("no/such/rows.json");
        let error = check_output_file("--json", &missing, &[]).unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
    }

    #[test]
    fn an_input_is_refused_under_any_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let context = dir.path().join("context.txt");
        let press = dir.path().join("press.toml");
        std::fs::write(&context, "text").unwrap();
        std::fs::write(&press, "press = \"knorm\"").unwrap();
        let inputs = [
            ("--context", context.as_path()),
            ("--press", press.as_path()),
        ];
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let dotted = dir.path().join(".").join("context.txt");
        let around = dir.path().join("sub").join("..").join("press.toml");
        let mut outs = vec![
            (context.clone(), "--context"),
            (dotted, "--context"),
            (around, "--press"),
        ];
        #[cfg(unix)]
        {
            let link = dir.path().join("link.kvp");
            std::os::unix::fs::symlink(&context, &link).unwrap();
            let hard = dir.path().join("hard.kvp");
            std::fs::hard_link(&press, &hard).unwrap();
            outs.extend([(link, "--context"), (hard, "--press")]);
        }
        for (out, flag) in outs {
            let error = check_output_file("--out", &out, &inputs)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(&format!("is the same file as {flag}")),
                "{error}"
            );
            assert_eq!(std::fs::read_to_string(inputs[0].1).unwrap(), "text");
        }
        // A new file, or another existing one, is fine.
        check_output_file("--out", &dir.path().join("ctx.kvp"), &inputs).unwrap();
        let other = dir.path().join("other.kvp");
        std::fs::write(&other, "old").unwrap();
        check_output_file("--out", &other, &inputs).unwrap();
    }

    #[test]
    fn output_folders_are_created_and_must_be_folders() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a/b");
        prepare_output_dir("--out", &out, &["x.svg"], &[]).unwrap();
        assert!(out.is_dir());
        std::fs::create_dir(out.join("x.svg")).unwrap();
        let error = prepare_output_dir("--out", &out, &["x.svg"], &[]).unwrap_err();
        assert!(error.to_string().contains("is a folder"), "{error}");
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let error = prepare_output_dir("--out", &file, &[], &[]).unwrap_err();
        assert!(error.to_string().contains("not a folder"), "{error}");
    }
}
