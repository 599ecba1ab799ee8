//! Statistics files read once per process: a press scores every layer of every compression from
//! the same file, so the file is read and checked on first use and kept, keyed by its path. A
//! file whose size, modification time or inode changed since (written again by
//! `calibrate-queries`) is read again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use crate::error::StatsFileError;
use crate::file::QueryStatsFile;

/// What identifies a version of a file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Result<Stamp, StatsFileError> {
    let metadata = std::fs::metadata(path).map_err(|e| StatsFileError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if !metadata.is_file() {
        return Err(StatsFileError::Read {
            path: path.to_path_buf(),
            message: "it is not a file".to_string(),
        });
    }
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Stamp {
        len: metadata.len(),
        modified: metadata.modified().ok(),
        inode,
    })
}

type Files = HashMap<PathBuf, (Stamp, Arc<QueryStatsFile>)>;

fn files() -> &'static Mutex<Files> {
    static FILES: OnceLock<Mutex<Files>> = OnceLock::new();
    FILES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The checked file at `path`, read at most once per version of the file.
pub fn load(path: &Path) -> Result<Arc<QueryStatsFile>, StatsFileError> {
    let stamp = stamp(path)?;
    // A panic elsewhere while the lock was held leaves a map that is still consistent.
    let mut files = files().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((known, file)) = files.get(path) {
        if *known == stamp {
            return Ok(Arc::clone(file));
        }
    }
    let file = Arc::new(QueryStatsFile::read(path)?);
    files.insert(path.to_path_buf(), (stamp, Arc::clone(&file)));
    Ok(file)
}
