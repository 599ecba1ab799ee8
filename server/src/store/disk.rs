//! Contexts as `<id>.kvp` files in a folder, written atomically (temporary file, sync,
//! rename, folder sync): a crash leaves a context whole or absent.

use std::path::{Path, PathBuf};

use kvpress::hooks::context_file::atomic::{remove_stale_temps_where, write_atomically};

use super::{is_context_id, ContextStore, StoreError};

/// A folder of `.kvp` files.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
}

impl DiskStore {
    /// Opens (creating it if needed) the folder `dir`, removing the temporary files of writes
    /// whose process was killed.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let store = Self {
            dir: dir.to_path_buf(),
        };
        std::fs::create_dir_all(dir).map_err(|e| store.error(format!("cannot create it: {e}")))?;
        remove_stale_temps_where(dir, |name| name.ends_with(".kvp"));
        Ok(store)
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.kvp"))
    }

    fn error(&self, message: String) -> StoreError {
        StoreError {
            store: self.describe(),
            message,
        }
    }
}

impl ContextStore for DiskStore {
    fn put(&self, id: &str, bytes: &[u8]) -> Result<(), StoreError> {
        write_atomically(&self.path(id), bytes).map_err(|e| self.error(e.to_string()))
    }

    fn get(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(self.path(id)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error(format!("cannot read {id}: {e}"))),
        }
    }

    fn delete(&self, id: &str) -> Result<bool, StoreError> {
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.error(format!("cannot delete {id}: {e}"))),
        }
    }

    fn list(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| self.error(format!("cannot list it: {e}")))?;
        let mut ids = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Temporary files of unfinished writes start with a dot and never match.
            let Some(id) = name.strip_suffix(".kvp") else {
                continue;
            };
            if is_context_id(id) {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                ids.push((id.to_string(), size));
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn describe(&self) -> String {
        format!("dir:{}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::new_context_id;

    #[test]
    fn a_stored_context_is_listed_read_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(&dir.path().join("contexts")).unwrap();
        let id = new_context_id();
        assert_eq!(store.get(&id).unwrap(), None);
        store.put(&id, b"abc").unwrap();
        std::fs::write(dir.path().join("contexts/.stray.tmp"), b"x").unwrap();
        assert_eq!(store.list().unwrap(), vec![(id.clone(), 3)]);
        assert_eq!(store.get(&id).unwrap().as_deref(), Some(&b"abc"[..]));
        assert!(store.delete(&id).unwrap());
        assert!(!store.delete(&id).unwrap());
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn opening_removes_the_temporary_files_of_killed_writers_only() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir
            .path()
            .join(".ctx-0123456789abcdef.kvp.tmp-999999999-00");
        let alive = dir.path().join(format!(
            ".ctx-0123456789abcdef.kvp.tmp-{}-00",
            std::process::id()
        ));
        let other = dir.path().join(".notes.txt.tmp-999999999-00");
        for path in [&dead, &alive, &other] {
            std::fs::write(path, b"partial").unwrap();
        }
        let store = DiskStore::open(dir.path()).unwrap();
        assert!(!dead.exists());
        assert!(alive.exists(), "a running writer's file is left alone");
        assert!(
            other.exists(),
            "only contexts' temporary files are the store's"
        );
        assert!(store.list().unwrap().is_empty());
    }
}
