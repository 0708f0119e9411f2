//! Cached backbone states: a corpus (or a query set) run through the
//! backbone once, stored on disk and memory-mapped, so that a frozen-backbone
//! trainer — and the evaluation of every head trained on it — never runs the
//! backbone over that text again.
//!
//! One folder per text set:
//!
//! | file | content |
//! |---|---|
//! | `states.f16` | little-endian f16 `[tokens, dim]`, texts one after another |
//! | `offsets.u64` | `texts + 1` little-endian row offsets into `states.f16` |
//! | `ids.txt` | one text id per line |
//! | `states.json` | dim, counts and what made the states; written last |
//!
//! A folder without `states.json` is an interrupted write and is not
//! opened. The states are the tokens the encoder keeps (document
//! punctuation dropped, query `[MASK]` augmentation kept), unnormalised —
//! a head is applied to them and its output normalised, exactly as
//! [`tessera_model::Encoder`] does per text.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::f16;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainingError};

pub const STATES: &str = "states.f16";
pub const OFFSETS: &str = "offsets.u64";
pub const IDS: &str = "ids.txt";
pub const META: &str = "states.json";

/// `states.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatesMeta {
    pub format: String,
    pub dim: usize,
    pub texts: usize,
    pub tokens: u64,
    /// What made the states (model, settings, source), for humans and keys.
    pub source: serde_json::Value,
    /// Seconds the backbone took to make them.
    #[serde(default)]
    pub seconds: f64,
}

const FORMAT: &str = "tessera-backbone-states";

/// Writes a state cache; [`StatesWriter::finish`] makes it visible.
pub struct StatesWriter {
    dir: PathBuf,
    dim: usize,
    data: BufWriter<File>,
    offsets: Vec<u64>,
    ids: Vec<String>,
}

impl StatesWriter {
    /// Starts a cache in `dir`, replacing whatever is there.
    pub fn create(dir: &Path, dim: usize) -> Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| TrainingError::io(dir, e))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| TrainingError::io(dir, e))?;
        let path = dir.join(STATES);
        let file = File::create(&path).map_err(|e| TrainingError::io(&path, e))?;
        Ok(Self {
            dir: dir.to_owned(),
            dim,
            data: BufWriter::with_capacity(1 << 20, file),
            offsets: vec![0],
            ids: Vec::new(),
        })
    }

    /// Appends one text's states (`rows × dim` values, row-major).
    pub fn push(&mut self, id: &str, states: &[f32]) -> Result<()> {
        if !states.len().is_multiple_of(self.dim) {
            return Err(TrainingError::InvalidInput(format!(
                "{id}: {} values are not whole {}-dim rows",
                states.len(),
                self.dim
            )));
        }
        let mut bytes = Vec::with_capacity(states.len() * 2);
        for &v in states {
            bytes.extend_from_slice(&f16::from_f32(v).to_le_bytes());
        }
        let path = self.dir.join(STATES);
        self.data
            .write_all(&bytes)
            .map_err(|e| TrainingError::io(&path, e))?;
        let last = *self.offsets.last().expect("offsets start at 0");
        self.offsets.push(last + (states.len() / self.dim) as u64);
        self.ids.push(id.to_owned());
        Ok(())
    }

    /// Flushes and fsyncs the data, then writes `states.json` last.
    pub fn finish(self, source: serde_json::Value, seconds: f64) -> Result<StateCache> {
        let Self {
            dir,
            dim,
            data,
            offsets,
            ids,
        } = self;
        let path = dir.join(STATES);
        let file = data
            .into_inner()
            .map_err(|e| TrainingError::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| TrainingError::io(&path, e))?;
        let off_bytes: Vec<u8> = offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        write_synced(&dir.join(OFFSETS), &off_bytes)?;
        let mut id_text = ids.join("\n");
        if !ids.is_empty() {
            id_text.push('\n');
        }
        write_synced(&dir.join(IDS), id_text.as_bytes())?;
        let meta = StatesMeta {
            format: FORMAT.into(),
            dim,
            texts: ids.len(),
            tokens: *offsets.last().expect("offsets start at 0"),
            source,
            seconds,
        };
        let json = serde_json::to_vec_pretty(&meta).expect("meta serialises");
        let tmp = dir.join("states.json.tmp");
        write_synced(&tmp, &json)?;
        let target = dir.join(META);
        std::fs::rename(&tmp, &target).map_err(|e| TrainingError::io(&target, e))?;
        StateCache::open(&dir)?.ok_or(TrainingError::MissingFile {
            path: target,
            what: "state cache just written",
        })
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| TrainingError::io(path, e))?;
    f.write_all(bytes).map_err(|e| TrainingError::io(path, e))?;
    f.sync_all().map_err(|e| TrainingError::io(path, e))
}

/// An opened (memory-mapped) state cache.
pub struct StateCache {
    pub dir: PathBuf,
    pub meta: StatesMeta,
    map: Option<Mmap>,
    offsets: Vec<u64>,
    ids: Vec<String>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for StateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCache")
            .field("dir", &self.dir)
            .field("texts", &self.ids.len())
            .field("tokens", &self.meta.tokens)
            .finish()
    }
}

impl StateCache {
    /// Opens the cache in `dir`; `None` when it is absent or was never
    /// finished. A finished cache whose files disagree is an error naming
    /// the file.
    pub fn open(dir: &Path) -> Result<Option<Self>> {
        let meta_path = dir.join(META);
        if !meta_path.is_file() {
            return Ok(None);
        }
        let text =
            std::fs::read_to_string(&meta_path).map_err(|e| TrainingError::io(&meta_path, e))?;
        let meta: StatesMeta = serde_json::from_str(&text).map_err(|e| {
            TrainingError::config(&meta_path, tessera_model::config::json_message(&e))
        })?;
        if meta.format != FORMAT || meta.dim == 0 {
            return Err(TrainingError::config(
                &meta_path,
                format!(
                    "not a {FORMAT} file (format {:?}, dim {})",
                    meta.format, meta.dim
                ),
            ));
        }
        let off_path = dir.join(OFFSETS);
        let raw = std::fs::read(&off_path).map_err(|e| TrainingError::io(&off_path, e))?;
        let offsets: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        if offsets.len() != meta.texts + 1 || offsets.last() != Some(&meta.tokens) {
            return Err(TrainingError::config(
                &off_path,
                format!(
                    "{} offsets ending at {:?} do not describe {} texts of {} tokens",
                    offsets.len(),
                    offsets.last(),
                    meta.texts,
                    meta.tokens
                ),
            ));
        }
        let ids_path = dir.join(IDS);
        let ids: Vec<String> = std::fs::read_to_string(&ids_path)
            .map_err(|e| TrainingError::io(&ids_path, e))?
            .lines()
            .map(str::to_owned)
            .collect();
        if ids.len() != meta.texts {
            return Err(TrainingError::config(
                &ids_path,
                format!("{} ids for {} texts", ids.len(), meta.texts),
            ));
        }
        let data_path = dir.join(STATES);
        let file = File::open(&data_path).map_err(|e| TrainingError::io(&data_path, e))?;
        let want = meta.tokens * meta.dim as u64 * 2;
        let have = file
            .metadata()
            .map_err(|e| TrainingError::io(&data_path, e))?
            .len();
        if have != want {
            return Err(TrainingError::config(
                &data_path,
                format!("{have} bytes, expected {want}"),
            ));
        }
        let map = if want == 0 {
            None
        } else {
            // SAFETY: the file is opened read-only and Tessera never writes a
            // finished cache in place (a rebuild replaces the folder), so the
            // mapped bytes do not change while mapped.
            Some(unsafe { Mmap::map(&file) }.map_err(|e| TrainingError::io(&data_path, e))?)
        };
        let index = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        Ok(Some(Self {
            dir: dir.to_owned(),
            meta,
            map,
            offsets,
            ids,
            index,
        }))
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.meta.dim
    }

    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The position of text `id`.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Tokens of text `i`.
    pub fn tokens(&self, i: usize) -> usize {
        (self.offsets[i + 1] - self.offsets[i]) as usize
    }

    /// The f16 states of text `i`, `tokens(i) × dim`.
    pub fn states(&self, i: usize) -> &[f16] {
        let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        let Some(map) = &self.map else {
            return &[];
        };
        let all: &[f16] = bytemuck::cast_slice(&map[..]);
        &all[a * self.meta.dim..b * self.meta.dim]
    }

    /// Texts `items` as one padded batch on `device`: states `[n, L, dim]`
    /// (f32, zeros past each text's end) and a mask `[n, L]` (1 on real
    /// tokens), `L` the longest of them (at least 1).
    pub fn batch(&self, items: &[usize], device: Device) -> (Tensor, Tensor) {
        let d = self.meta.dim;
        let width = items
            .iter()
            .map(|&i| self.tokens(i))
            .max()
            .unwrap_or(0)
            .max(1);
        // Copied as f16 and widened by libtorch (vectorised) in one go.
        let mut data = vec![f16::ZERO; items.len() * width * d];
        let mut mask = vec![0f32; items.len() * width];
        for (row, &i) in items.iter().enumerate() {
            let s = self.states(i);
            let base = row * width * d;
            data[base..base + s.len()].copy_from_slice(s);
            mask[row * width..row * width + self.tokens(i)].fill(1.0);
        }
        let n = items.len() as i64;
        let states = Tensor::from_data_size(
            bytemuck::cast_slice(&data),
            &[n, width as i64, d as i64],
            Kind::Half,
        )
        .to_device(device)
        .to_kind(Kind::Float);
        let mask = Tensor::from_slice(&mask)
            .view([n, width as i64])
            .to_kind(Kind::Float)
            .to_device(device);
        (states, mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_open_and_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut w = StatesWriter::create(&path, 2).unwrap();
        w.push("a", &[1.0, 2.0, 3.0, 4.0]).unwrap();
        w.push("empty", &[]).unwrap();
        w.push("b", &[0.5, -0.5]).unwrap();
        assert!(w.push("bad", &[1.0]).is_err());
        // Not visible until finished.
        assert!(StateCache::open(&path).unwrap().is_none());
        let c = w.finish(serde_json::json!({"test": true}), 0.0).unwrap();
        assert_eq!((c.len(), c.dim(), c.meta.tokens), (3, 2, 3));
        assert_eq!(c.position("b"), Some(2));
        assert_eq!((c.tokens(0), c.tokens(1), c.tokens(2)), (2, 0, 1));
        let (s, m) = c.batch(&[2, 0, 1], Device::Cpu);
        assert_eq!(s.size(), [3, 2, 2]);
        let s: Vec<f32> = s.view([-1]).try_into().unwrap();
        assert_eq!(
            s,
            vec![0.5, -0.5, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]
        );
        let m: Vec<f32> = m.view([-1]).try_into().unwrap();
        assert_eq!(m, vec![1.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
        // A damaged file is named.
        std::fs::write(path.join(STATES), [0u8; 3]).unwrap();
        let e = StateCache::open(&path).unwrap_err().to_string();
        assert!(e.contains("states.f16"), "{e}");
    }
}
