//! Checks on the file a command writes, made before any work: it must not be one of the
//! command's inputs (the same file through another spelling, a symbolic link or a hard link),
//! and it must be a file in an existing folder.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why an output path is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum OutputPathError {
    /// The output is the same file as an input.
    IsAnInput {
        /// The output path as given.
        out: PathBuf,
        /// The input's option (`--context`, `--press`, `--prompt`).
        flag: &'static str,
        /// The input path as given.
        input: PathBuf,
    },
    /// The output is an existing folder.
    IsAFolder {
        /// The output path as given.
        out: PathBuf,
    },
    /// The output's folder does not exist.
    NoFolder {
        /// The output path as given.
        out: PathBuf,
        /// The folder that is missing.
        folder: PathBuf,
    },
}

impl fmt::Display for OutputPathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IsAnInput { out, flag, input } => write!(
                f,
                "--out {} is the same file as {flag} {}: writing it would destroy the input; \
                 choose another --out",
                out.display(),
                input.display()
            ),
            Self::IsAFolder { out } => write!(
                f,
                "--out {} is a folder; give a file path, e.g. {}",
                out.display(),
                out.join("out").display()
            ),
            Self::NoFolder { out, folder } => write!(
                f,
                "--out {}: the folder {} does not exist; create it first",
                out.display(),
                folder.display()
            ),
        }
    }
}

impl std::error::Error for OutputPathError {}

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

/// Refuses `out` when it is one of `inputs` (option name, path), an existing folder, or in a
/// folder that does not exist.
pub fn check_output(out: &Path, inputs: &[(&'static str, &Path)]) -> Result<(), OutputPathError> {
    if let Some((flag, input)) = inputs.iter().find(|(_, input)| same_file(out, input)) {
        return Err(OutputPathError::IsAnInput {
            out: out.to_path_buf(),
            flag,
            input: input.to_path_buf(),
        });
    }
    if out.is_dir() {
        return Err(OutputPathError::IsAFolder {
            out: out.to_path_buf(),
        });
    }
    match out.parent() {
        Some(folder) if !folder.as_os_str().is_empty() && !folder.is_dir() => {
            Err(OutputPathError::NoFolder {
                out: out.to_path_buf(),
                folder: folder.to_path_buf(),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let dotted = dir.path().join(".").join("context.txt");
        let around = dir.path().join("sub").join("..").join("press.toml");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for (out, flag) in [
            (&context, "--context"),
            (&dotted, "--context"),
            (&around, "--press"),
        ] {
            let error = check_output(out, &inputs).unwrap_err();
            assert!(
                matches!(&error, OutputPathError::IsAnInput { flag: f, .. } if *f == flag),
                "{error}"
            );
        }
        #[cfg(unix)]
        {
            let link = dir.path().join("link.kvp");
            std::os::unix::fs::symlink(&context, &link).unwrap();
            let hard = dir.path().join("hard.kvp");
            std::fs::hard_link(&press, &hard).unwrap();
            for (out, flag) in [(&link, "--context"), (&hard, "--press")] {
                let error = check_output(out, &inputs).unwrap_err();
                assert!(
                    matches!(&error, OutputPathError::IsAnInput { flag: f, .. } if *f == flag),
                    "{error}"
                );
            }
        }
        // A new file, or another existing one, is fine.
        check_output(&dir.path().join("ctx.kvp"), &inputs).unwrap();
        let other = dir.path().join("other.kvp");
        std::fs::write(&other, "old").unwrap();
        check_output(&other, &inputs).unwrap();
        check_output(Path::new("relative-new-file.kvp"), &inputs).unwrap();
    }

    #[test]
    fn folders_and_missing_folders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            check_output(dir.path(), &[]),
            Err(OutputPathError::IsAFolder {
                out: dir.path().to_path_buf()
            })
        );
        let missing = dir.path().join("missing");
        let out = missing.join("ctx.kvp");
        assert_eq!(
            check_output(&out, &[]),
            Err(OutputPathError::NoFolder {
                out: out.clone(),
                folder: missing
            })
        );
    }
}
