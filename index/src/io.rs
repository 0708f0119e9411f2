//! Low-level file I/O: checksummed array writers, memory-mapped readers and
//! the fsync/rename steps that make commits atomic.
//!
//! Every array file is a plain little-endian array of one element type,
//! nothing else: mapped at a page boundary, it is aligned for any element
//! type, so readers view it in place (`bytemuck::try_cast_slice`) without
//! copying it into RAM.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytemuck::Pod;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};

#[cfg(target_endian = "big")]
compile_error!("tessera-index stores little-endian files and reads them in place");

/// Size and CRC-32 of one file, as recorded in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub bytes: u64,
    pub crc32: u32,
}

/// Writes one array file, counting bytes and computing its CRC on the way.
pub struct ArrayWriter {
    path: PathBuf,
    out: BufWriter<File>,
    bytes: u64,
    crc: crc32fast::Hasher,
}

impl ArrayWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|e| IndexError::io(path, e))?;
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::with_capacity(1 << 20, file),
            bytes: 0,
            crc: crc32fast::Hasher::new(),
        })
    }

    pub fn write<T: Pod>(&mut self, items: &[T]) -> Result<()> {
        self.write_bytes(bytemuck::cast_slice(items))
    }

    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out
            .write_all(bytes)
            .map_err(|e| IndexError::io(&self.path, e))
    }

    /// Flushes, fsyncs and returns the manifest entry.
    pub fn finish(self) -> Result<FileEntry> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| IndexError::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| IndexError::io(&self.path, e))?;
        Ok(FileEntry {
            bytes: self.bytes,
            crc32: self.crc.finalize(),
        })
    }
}

/// Writes a whole array file at once.
pub fn write_array<T: Pod>(path: &Path, items: &[T]) -> Result<FileEntry> {
    let mut w = ArrayWriter::create(path)?;
    w.write(items)?;
    w.finish()
}

/// A read-only memory map of one file whose size was checked against the
/// manifest. Empty files are represented without a mapping.
#[derive(Debug)]
pub struct Mapped {
    path: PathBuf,
    map: Option<Mmap>,
}

impl Mapped {
    /// Maps `path`, failing unless it is exactly `entry.bytes` long and its
    /// CRC-32 is `entry.crc32` (checked once per process for a file that
    /// has not changed since; see [`check_file`]).
    pub fn open(path: &Path, entry: &FileEntry) -> Result<Self> {
        let file = open_listed(path)?;
        let len = file.metadata().map_err(|e| IndexError::io(path, e))?.len();
        if len != entry.bytes {
            return Err(size_error(path, len, entry));
        }
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the index's files are immutable once committed (every
            // change writes new files and swaps the manifest), so the mapping
            // is never modified underneath us by Tessera. Its size was checked
            // above, and all reads go through bounds-checked slices.
            Some(unsafe { Mmap::map(&file) }.map_err(|e| IndexError::io(path, e))?)
        };
        let mapped = Self {
            path: path.to_owned(),
            map,
        };
        verify_once(&file, entry, || {
            let got = FileEntry {
                bytes: len,
                crc32: parallel_crc(mapped.bytes()),
            };
            check_entry(path, &got, entry)
        })?;
        Ok(mapped)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Views the file as an array of `T`.
    pub fn slice<T: Pod>(&self) -> Result<&[T]> {
        // An empty file (a segment of documents without tokens) is an empty
        // array; its byte slice has no address aligned for `T`.
        if self.bytes().is_empty() {
            return Ok(&[]);
        }
        bytemuck::try_cast_slice(self.bytes()).map_err(|e| {
            IndexError::corrupt(
                &self.path,
                format!(
                    "not an array of {}-byte elements ({e:?})",
                    std::mem::size_of::<T>()
                ),
            )
        })
    }
}

/// A file as verified: device, inode, size, modification time and the
/// CRC it was checked against. A file that still has all of these was
/// verified earlier by this process and is not read again (the index's
/// files never change in place; a copy or rewrite changes the inode or the
/// time).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    crc32: u32,
}

impl FileId {
    fn of(file: &File, entry: &FileEntry) -> Option<Self> {
        let m = file.metadata().ok()?;
        let mtime_ns = m
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos() as i128;
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        // Without an inode to tell files apart, always verify.
        (ino != 0).then_some(Self {
            dev,
            ino,
            len: m.len(),
            mtime_ns,
            crc32: entry.crc32,
        })
    }
}

static VERIFIED: std::sync::Mutex<Option<std::collections::HashSet<FileId>>> =
    std::sync::Mutex::new(None);

fn verified(id: &Option<FileId>) -> bool {
    let Some(id) = id else { return false };
    VERIFIED
        .lock()
        .map(|g| g.as_ref().is_some_and(|s| s.contains(id)))
        .unwrap_or(false)
}

fn remember(id: Option<FileId>) {
    if let (Some(id), Ok(mut g)) = (id, VERIFIED.lock()) {
        g.get_or_insert_with(Default::default).insert(id);
    }
}

/// Forgets which files this process has verified, so that the next
/// [`crate::Index::open`] reads and checks every file again (what a fresh
/// process does; the open-time benchmark measures it this way).
pub fn forget_verified() {
    if let Ok(mut g) = VERIFIED.lock() {
        *g = None;
    }
}

/// Checks a file's size and CRC against its manifest entry (once per
/// process for an unchanged file), for files read by other means than a
/// map (the text index's).
pub fn check_file(path: &Path, entry: &FileEntry) -> Result<()> {
    let file = open_listed(path)?;
    verify_once(&file, entry, || check_entry(path, &file_crc(path)?, entry))
}

/// Runs `check` unless this process verified `file` against `entry`
/// before and it has not changed since; remembers it once it passes.
fn verify_once(file: &File, entry: &FileEntry, check: impl FnOnce() -> Result<()>) -> Result<()> {
    let id = FileId::of(file, entry);
    if verified(&id) {
        return Ok(());
    }
    check()?;
    remember(id);
    Ok(())
}

/// Opens a file the manifest lists; a missing one is damage, not an I/O
/// error.
fn open_listed(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            IndexError::corrupt(path, "missing file")
        } else {
            IndexError::io(path, e)
        }
    })
}

fn size_error(path: &Path, len: u64, want: &FileEntry) -> IndexError {
    IndexError::corrupt(
        path,
        format!("size is {len} bytes, manifest says {}", want.bytes),
    )
}

/// `Ok` when a file's measured size and CRC (`got`) are its manifest
/// entry's (`want`), else the error naming the file.
pub fn check_entry(path: &Path, got: &FileEntry, want: &FileEntry) -> Result<()> {
    if got.bytes != want.bytes {
        return Err(size_error(path, got.bytes, want));
    }
    if got.crc32 != want.crc32 {
        return Err(IndexError::Checksum {
            path: path.to_owned(),
            expected: want.crc32,
            actual: got.crc32,
        });
    }
    Ok(())
}

/// CRC-32 of `bytes`, computed in 8 MiB blocks on the rayon pool and
/// combined.
fn parallel_crc(bytes: &[u8]) -> u32 {
    use rayon::prelude::*;
    const BLOCK: usize = 8 << 20;
    if bytes.len() <= BLOCK {
        return crc32fast::hash(bytes);
    }
    let parts: Vec<crc32fast::Hasher> = bytes
        .par_chunks(BLOCK)
        .map(|c| {
            let mut h = crc32fast::Hasher::new();
            h.update(c);
            h
        })
        .collect();
    let mut all = crc32fast::Hasher::new();
    for p in &parts {
        all.combine(p);
    }
    all.finalize()
}

/// CRC-32 of a whole file, streamed.
pub fn file_crc(path: &Path) -> Result<FileEntry> {
    let mut f = File::open(path).map_err(|e| IndexError::io(path, e))?;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| IndexError::io(path, e))?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileEntry {
        bytes,
        crc32: crc.finalize(),
    })
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync
/// of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    {
        let mut f = File::create(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| IndexError::io(&tmp, e))?;
        f.sync_all().map_err(|e| IndexError::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| IndexError::io(path, e))?;
    sync_dir(dir)
}

/// fsyncs a directory so that renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| IndexError::io(dir, e))
}
