//! The index's write lock (`write.lock`, an advisory file lock released
//! even if the process dies) and the removal of files a new manifest no
//! longer references.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{IndexError, Result};
use crate::manifest::{Manifest, MANIFEST};

/// An exclusive writer lock on an index directory.
#[derive(Debug)]
pub struct WriteLock {
    _file: File,
    path: PathBuf,
}

impl WriteLock {
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join("write.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| IndexError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file, path }),
            Err(std::fs::TryLockError::WouldBlock) => Err(IndexError::Locked {
                path,
                message: "another process is writing this index".into(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(IndexError::io(&path, e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Removes files and folders of `dir` that `manifest` no longer references.
/// Best effort: a failure only leaves garbage behind.
pub(crate) fn collect_garbage(dir: &Path, manifest: &Manifest, _lock: &WriteLock) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let keep = name == MANIFEST
            || name == "write.lock"
            || name.starts_with('.')
            || manifest.files.contains_key(&name)
            || manifest.segments.iter().any(|s| s.name == name);
        if !keep {
            let p = e.path();
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if let Err(err) = r {
                tracing::warn!(path = %p.display(), %err, "could not remove unreferenced index file");
            }
        }
    }
}
