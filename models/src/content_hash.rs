//! What a model is, by content: SHA-256 of its files, so that a byte-identical copy under another
//! name is the same model and another model of the same name and size is not. Saved contexts
//! (`kvpress-hooks`) and evaluation fingerprints (`kvpress-eval`) compare these hashes;
//! `kvpress fetch-model` checks the download with [`file_sha256`].
//!
//! Hashing the ~100 MB default model takes about 0.15 s; [`model_sha256`] keeps each hash for the
//! process, keyed by the files' paths, sizes, modification times and inodes, so a model is hashed
//! once however many contexts or rows use it.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Files of a Hugging Face folder that decide what the model computes (what the loader reads),
/// besides its `*.safetensors` files.
const FOLDER_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
];

/// SHA-256 of `bytes` as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 (hex) of the file at `path` (what `sha256sum` prints), read in 1 MiB blocks.
pub fn file_sha256(path: &Path) -> Result<String> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// SHA-256 (hex) of the model at `path`: for a GGUF file, the file's own hash; for a Hugging Face
/// folder, the hash of the lines `"<sha256> <name>\n"` of its `*.safetensors`, config, generation
/// config, tokenizer and chat template files in name order. Computed once per process for files
/// that keep their size, modification time and inode.
pub fn model_sha256(path: &Path) -> Result<String> {
    let files = model_files(path)?;
    let key = files.iter().map(|f| stamp(f)).collect::<Result<Vec<_>>>()?;
    if let Some(hash) = lock_cache().get(&key) {
        return Ok(hash.clone());
    }
    let hash = if path.is_dir() {
        let mut hasher = Sha256::new();
        for file in &files {
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
            hasher.update(format!(
                "{} {}\n",
                file_sha256(file)?,
                name.unwrap_or_default()
            ));
        }
        hex(&hasher.finalize())
    } else {
        file_sha256(path)?
    };
    lock_cache().insert(key, hash.clone());
    Ok(hash)
}

/// The files whose bytes identify the model at `path`, in name order.
fn model_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let file = entry.map_err(io)?.path();
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if FOLDER_FILES.contains(&name) || name.ends_with(".safetensors") {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// One hashed file as it was when hashed: the cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileStamp {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    /// The inode on Unix (a file replaced by a rename gets a new one), else 0.
    inode: u64,
}

fn stamp(path: &Path) -> Result<FileStamp> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(io)?;
    Ok(FileStamp {
        path: std::fs::canonicalize(path).map_err(io)?,
        len: metadata.len(),
        modified: metadata.modified().ok(),
        inode: inode(&metadata),
    })
}

#[cfg(unix)]
fn inode(metadata: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(metadata)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// Hashes already computed in this process.
fn lock_cache() -> std::sync::MutexGuard<'static, HashMap<Vec<FileStamp>, String>> {
    static CACHE: OnceLock<Mutex<HashMap<Vec<FileStamp>, String>>> = OnceLock::new();
    CACHE
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_test_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_copy_hashes_the_same_and_an_edit_does_not() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|source| Error::Io {
            path: PathBuf::from("tempdir"),
            source,
        })?;
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let original = write("a.gguf", b"weights");
        let copy = write("b.gguf", b"weights");
        let edited = write("c.gguf", b"weightz");
        assert_eq!(model_sha256(&original)?, model_sha256(&copy)?);
        assert_eq!(model_sha256(&original)?, sha256_hex(b"weights"));
        assert_ne!(model_sha256(&original)?, model_sha256(&edited)?);
        Ok(())
    }

    #[test]
    fn a_folder_hash_covers_its_config_and_weights() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("model.safetensors"), b"w").unwrap();
        std::fs::write(dir.path().join("README.md"), b"ignored").unwrap();
        let before = model_sha256(dir.path())?;
        std::fs::write(dir.path().join("README.md"), b"still ignored").unwrap();
        assert_eq!(model_sha256(dir.path())?, before);
        std::fs::write(dir.path().join("config.json"), b"{\"x\":1}").unwrap();
        assert_ne!(model_sha256(dir.path())?, before);
        Ok(())
    }
}
