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
    /// Maps `path`, failing unless it is exactly `entry.bytes` long.
    pub fn open(path: &Path, entry: &FileEntry) -> Result<Self> {
        let file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                IndexError::corrupt(path, "missing file")
            } else {
                IndexError::io(path, e)
            }
        })?;
        let len = file.metadata().map_err(|e| IndexError::io(path, e))?.len();
        if len != entry.bytes {
            return Err(IndexError::corrupt(
                path,
                format!("size is {len} bytes, manifest says {}", entry.bytes),
            ));
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
        Ok(Self {
            path: path.to_owned(),
            map,
        })
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
