//! Writing a file so that its path never holds a partial one: the bytes go to a temporary file
//! in the same folder (`.<name>.tmp-<pid>-<random>`), which is synced to disk and then renamed
//! onto the path (a rename within a file system replaces the path in one step), and the folder
//! is synced so that the rename survives a crash. A failed write removes the temporary file;
//! a process killed mid-write leaves the path as it was (absent, or the previous complete file)
//! and at worst a stray temporary file, which the next write to the same path removes (its
//! process being gone).

use std::collections::hash_map::RandomState;
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::ContextFileError;

/// Writes `bytes` to `path` atomically (see the module docs). A symbolic link at `path` is
/// followed: its target is replaced, the link kept.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ContextFileError> {
    let error = |message: String| ContextFileError::Write {
        path: path.to_path_buf(),
        message,
    };
    let target = resolve_link(path);
    let name = target
        .file_name()
        .ok_or_else(|| error("the path names no file".to_string()))?;
    let folder = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    remove_stale_temps(&folder, &name.to_string_lossy());
    let (temp_path, mut file) = create_temp(&folder, &name.to_string_lossy()).map_err(|e| {
        error(format!(
            "cannot create a temporary file in {}: {e}",
            folder.display()
        ))
    })?;
    let temp = TempFile(Some(temp_path));
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| error(format!("cannot write {}: {e}", temp.path().display())))?;
    drop(file);
    std::fs::rename(temp.path(), &target).map_err(|e| {
        error(format!(
            "cannot move {} onto it: {e}",
            temp.path().display()
        ))
    })?;
    temp.keep();
    sync_folder(&folder).map_err(|e| {
        error(format!(
            "the file is complete but its folder {} could not be synced: {e}",
            folder.display()
        ))
    })
}

/// The file a symbolic link at `path` points to (when it resolves), else `path`.
fn resolve_link(path: &Path) -> PathBuf {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match is_link {
        true => std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        false => path.to_path_buf(),
    }
}

/// A new file `.<name>.tmp-<pid>-<random>` in `folder` that no other writer uses.
fn create_temp(folder: &Path, name: &str) -> std::io::Result<(PathBuf, File)> {
    let random = RandomState::new();
    let mut last_error = None;
    for attempt in 0u64..16 {
        let suffix = random.hash_one((attempt, std::time::SystemTime::now()));
        let path = folder.join(format!(".{name}.tmp-{}-{suffix:016x}", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

/// Removes the temporary files `.<name>.tmp-<pid>-<random>` in `folder` left by writers that
/// were killed: those whose process no longer runs (Linux: no `/proc/<pid>`; elsewhere nothing
/// is removed). Files that cannot be read or removed are left alone.
fn remove_stale_temps(folder: &Path, name: &str) {
    remove_stale_temps_where(folder, |target| target == name);
}

/// Removes the temporary files `.<name>.tmp-<pid>-<random>` in `folder` of every `name` that
/// `target` accepts (e.g. every `.kvp` file of a folder of contexts, when a store opens it)
/// whose writer was killed, as a write to one path does for that path.
pub fn remove_stale_temps_where(folder: &Path, target: impl Fn(&str) -> bool) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some((name, rest)) = file_name
            .strip_prefix('.')
            .and_then(|f| f.rsplit_once(".tmp-"))
        else {
            continue;
        };
        if !target(name) {
            continue;
        }
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// A temporary file removed when dropped, unless [`TempFile::keep`] was called.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// The file was renamed onto its final path: nothing to remove.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Makes a rename in `folder` durable (Unix: fsync of the folder; elsewhere nothing to do).
fn sync_folder(folder: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        match File::open(folder).and_then(|dir| dir.sync_all()) {
            // Some file systems cannot sync a folder; the rename itself has happened.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
            other => other,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = folder;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_replace_the_file_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctx.kvp");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(entries(dir.path()), ["ctx.kvp"]);
    }

    #[test]
    fn a_failed_write_removes_its_temporary_file_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        // A folder at the path: the rename fails after the temporary file was written.
        let path = dir.path().join("ctx.kvp");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"x").unwrap();
        let error = write_atomically(&path, b"bytes").unwrap_err();
        assert!(matches!(error, ContextFileError::Write { .. }), "{error}");
        assert_eq!(entries(dir.path()), ["ctx.kvp"]);
        let missing = dir.path().join("no-such-folder").join("ctx.kvp");
        let error = write_atomically(&missing, b"bytes").unwrap_err();
        assert!(matches!(error, ContextFileError::Write { .. }), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_keeps_pointing_at_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.kvp");
        let link = dir.path().join("link.kvp");
        std::fs::write(&target, b"old").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomically(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }

    #[test]
    fn temporary_files_of_killed_writers_are_removed_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctx.kvp");
        // A pid above Linux's largest (4194304) never runs; this process's own is running.
        let dead = dir.path().join(".ctx.kvp.tmp-4194305-00000000000000aa");
        let alive = dir.path().join(format!(
            ".ctx.kvp.tmp-{}-00000000000000bb",
            std::process::id()
        ));
        let other = dir.path().join(".other.kvp.tmp-4194305-00000000000000cc");
        for stray in [&dead, &alive, &other] {
            std::fs::write(stray, b"partial").unwrap();
        }
        write_atomically(&path, b"whole").unwrap();
        assert!(!dead.exists() || !Path::new("/proc/self").exists());
        assert!(alive.exists(), "a running writer's file is kept");
        assert!(other.exists(), "another path's file is kept");
    }

    #[test]
    fn concurrent_writers_leave_one_complete_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctx.kvp");
        let contents: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 1 << 16]).collect();
        std::thread::scope(|scope| {
            for bytes in &contents {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..5 {
                        write_atomically(path, bytes).unwrap();
                    }
                });
            }
        });
        let written = std::fs::read(&path).unwrap();
        assert!(contents.contains(&written), "a mix of writers");
        assert_eq!(entries(dir.path()), ["ctx.kvp"]);
    }
}
