//! Precomputed token vectors on disk, the layout `tessera encode-corpus`
//! writes and `tessera index build --embeddings` reads:
//!
//! | file | content |
//! |---|---|
//! | `embeddings.npy` | f32 `[tokens, dim]`, documents one after another |
//! | `doclens.npy` (or `doclens.json`) | tokens per document |
//! | `ids.txt` | one document id per line |
//! | `docs.jsonl` | optional: `{"id", "title", "text", "metadata"}` per document |
//! | `encode.json` | Tessera's state: counts, byte sizes at the last checkpoint, model, `complete` |
//!
//! Other engines' vectors load from the first three files alone. While
//! encoding, every checkpoint flushes and fsyncs the files and records their
//! sizes in `encode.json` (written atomically); the `.npy` headers always
//! describe the checkpointed rows. Resuming truncates the files back to the
//! checkpoint and appends, so a resumed run writes the same bytes as an
//! uninterrupted one.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

pub const EMBEDDINGS: &str = "embeddings.npy";
pub const DOCLENS: &str = "doclens.npy";
pub const DOCLENS_JSON: &str = "doclens.json";
pub const IDS: &str = "ids.txt";
pub const DOCS: &str = "docs.jsonl";
pub const STATE: &str = "encode.json";

/// Bytes reserved for an `.npy` header we write (so it can be rewritten in
/// place as rows are appended).
const HEADER_LEN: usize = 128;

/// Byte sizes of the data files at a checkpoint.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sizes {
    pub embeddings: u64,
    pub doclens: u64,
    pub ids: u64,
    pub docs: u64,
}

/// `encode.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub format: String,
    pub version: u32,
    pub dim: usize,
    pub docs: u64,
    pub tokens: u64,
    /// Input lines consumed up to the checkpoint.
    pub input_lines: u64,
    pub input: String,
    pub sizes: Sizes,
    /// Skipped records by kind.
    pub skipped: BTreeMap<String, u64>,
    /// Documents cut at the model's maximum length.
    pub truncated: u64,
    /// Documents with no content tokens (empty title and text, or only
    /// punctuation): stored and indexed with no vectors.
    #[serde(default)]
    pub empty: u64,
    pub complete: bool,
    /// The model that made the vectors.
    pub model: serde_json::Value,
}

const FORMAT: &str = "tessera-embeddings";

fn npy_header(descr: &str, shape: &[u64]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    let pad = HEADER_LEN - 10 - dict.len() - 1;
    h.extend_from_slice(&((HEADER_LEN - 10) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.extend(std::iter::repeat_n(b' ', pad));
    h.push(b'\n');
    debug_assert_eq!(h.len(), HEADER_LEN);
    h
}

/// A parsed `.npy` header: dtype, shape and where the data starts.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyHeader {
    pub descr: String,
    pub shape: Vec<u64>,
    pub data_offset: u64,
}

/// Reads and checks an `.npy` header (versions 1–3, C order).
pub fn read_npy_header(path: &Path, r: &mut impl Read) -> Result<NpyHeader> {
    let bad = |m: &str| crate::error::err!("{}: not a usable .npy file: {m}", path.display());
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| bad("too short"))?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(bad("no NUMPY magic"));
    }
    let (len, pre) = if magic[6] == 1 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b).map_err(|_| bad("truncated header"))?;
        (u16::from_le_bytes(b) as usize, 10)
    } else {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).map_err(|_| bad("truncated header"))?;
        (u32::from_le_bytes(b) as usize, 12)
    };
    if len > 1 << 20 {
        return Err(bad("header too long"));
    }
    let mut h = vec![0u8; len];
    r.read_exact(&mut h).map_err(|_| bad("truncated header"))?;
    let h = String::from_utf8_lossy(&h);
    let field = |key: &str| -> Option<String> {
        let i = h.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = h[i..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest.to_owned())
    };
    let descr = field("descr")
        .and_then(|s| {
            s.strip_prefix('\'')
                .and_then(|s| s.split('\'').next())
                .map(String::from)
        })
        .ok_or_else(|| bad("no descr"))?;
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err(bad("Fortran order is not supported (save with C order)"));
    }
    let shape_s = field("shape").ok_or_else(|| bad("no shape"))?;
    let inner = shape_s
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("malformed shape"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().map_err(|_| bad("malformed shape")))
        .collect::<Result<Vec<_>>>()?;
    Ok(NpyHeader {
        descr,
        shape,
        data_offset: (pre + len) as u64,
    })
}

fn io_ctx(path: &Path) -> impl Fn(std::io::Error) -> crate::error::EngineError + '_ {
    move |e| crate::error::err!("{}: {e}", path.display())
}

/// Appends documents' vectors to an embeddings folder, with checkpoints.
pub struct EmbeddingsWriter {
    dir: PathBuf,
    emb: BufWriter<File>,
    doclens: BufWriter<File>,
    ids: BufWriter<File>,
    docs: BufWriter<File>,
    pub state: State,
}

fn open_at(path: &Path, len: u64) -> Result<BufWriter<File>> {
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(io_ctx(path))?;
    f.set_len(len).map_err(io_ctx(path))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    w.seek(SeekFrom::Start(len)).map_err(io_ctx(path))?;
    Ok(w)
}

impl EmbeddingsWriter {
    /// Starts a new folder (created; it must be empty if it exists).
    pub fn create(dir: &Path, dim: usize, input: &str, model: serde_json::Value) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io_ctx(dir))?;
        if std::fs::read_dir(dir)
            .map_err(io_ctx(dir))?
            .next()
            .is_some()
        {
            bail!(
                "{}: exists and is not empty (an earlier run? resume it with --resume, or remove it)",
                dir.display()
            );
        }
        let state = State {
            format: FORMAT.into(),
            version: 1,
            dim,
            docs: 0,
            tokens: 0,
            input_lines: 0,
            input: input.to_owned(),
            sizes: Sizes {
                embeddings: HEADER_LEN as u64,
                doclens: HEADER_LEN as u64,
                ids: 0,
                docs: 0,
            },
            skipped: BTreeMap::new(),
            truncated: 0,
            empty: 0,
            complete: false,
            model,
        };
        let mut w = Self::open(dir, state)?;
        w.checkpoint(0)?;
        Ok(w)
    }

    /// Continues an unfinished folder from its last checkpoint.
    pub fn resume(dir: &Path) -> Result<Self> {
        let state = load_state(dir)?
            .with_context(|| format!("{}: no {STATE}; nothing to resume", dir.display()))?;
        if state.complete {
            bail!(
                "{}: encoding finished already; nothing to resume",
                dir.display()
            );
        }
        Self::open(dir, state)
    }

    fn open(dir: &Path, state: State) -> Result<Self> {
        let s = state.sizes;
        let mut w = Self {
            dir: dir.to_owned(),
            emb: open_at(&dir.join(EMBEDDINGS), s.embeddings)?,
            doclens: open_at(&dir.join(DOCLENS), s.doclens)?,
            ids: open_at(&dir.join(IDS), s.ids)?,
            docs: open_at(&dir.join(DOCS), s.docs)?,
            state,
        };
        w.write_headers()?;
        Ok(w)
    }

    /// Ids written so far (to detect duplicates after a resume).
    pub fn written_ids(&self) -> Result<Vec<String>> {
        let p = self.dir.join(IDS);
        let f = File::open(&p).map_err(io_ctx(&p))?;
        let r = BufReader::new(f).take(self.state.sizes.ids);
        r.lines()
            .map(|l| l.map_err(io_ctx(&p)))
            .collect::<Result<Vec<_>>>()
    }

    /// Appends one document.
    pub fn add(
        &mut self,
        id: &str,
        title: &str,
        text: &str,
        metadata: &serde_json::Value,
        vectors: &[f32],
    ) -> Result<()> {
        let dim = self.state.dim;
        ensure!(
            vectors.len().is_multiple_of(dim),
            "document {id:?}: {} floats is not a whole number of {dim}-dim vectors",
            vectors.len()
        );
        let n = vectors.len() / dim;
        let dir = self.dir.clone();
        let e = io_ctx(&dir);
        self.emb
            .write_all(bytemuck::cast_slice(vectors))
            .map_err(&e)?;
        self.doclens
            .write_all(&(n as u32).to_le_bytes())
            .map_err(&e)?;
        writeln!(self.ids, "{id}").map_err(&e)?;
        serde_json::to_writer(
            &mut self.docs,
            &serde_json::json!({"id": id, "title": title, "text": text, "metadata": metadata}),
        )?;
        writeln!(self.docs).map_err(&e)?;
        self.state.docs += 1;
        self.state.tokens += n as u64;
        self.state.empty += u64::from(n == 0);
        Ok(())
    }

    fn write_headers(&mut self) -> Result<()> {
        let rows = self.state.tokens;
        for (w, h, name) in [
            (
                &mut self.emb,
                npy_header("<f4", &[rows, self.state.dim as u64]),
                EMBEDDINGS,
            ),
            (
                &mut self.doclens,
                npy_header("<u4", &[self.state.docs]),
                DOCLENS,
            ),
        ] {
            let p = self.dir.join(name);
            let f = w.get_mut();
            let end = f.stream_position().map_err(io_ctx(&p))?;
            f.seek(SeekFrom::Start(0)).map_err(io_ctx(&p))?;
            f.write_all(&h).map_err(io_ctx(&p))?;
            f.seek(SeekFrom::Start(end.max(HEADER_LEN as u64)))
                .map_err(io_ctx(&p))?;
        }
        Ok(())
    }

    /// Makes everything written so far durable and records it, with the
    /// number of input lines it covers.
    pub fn checkpoint(&mut self, input_lines: u64) -> Result<()> {
        let dir = self.dir.clone();
        let e = io_ctx(&dir);
        for w in [
            &mut self.emb,
            &mut self.doclens,
            &mut self.ids,
            &mut self.docs,
        ] {
            w.flush().map_err(&e)?;
        }
        self.write_headers()?;
        let mut sizes = Sizes::default();
        for (w, s) in [
            (&mut self.emb, &mut sizes.embeddings),
            (&mut self.doclens, &mut sizes.doclens),
            (&mut self.ids, &mut sizes.ids),
            (&mut self.docs, &mut sizes.docs),
        ] {
            let f = w.get_mut();
            f.sync_data().map_err(&e)?;
            *s = f.stream_position().map_err(&e)?;
        }
        self.state.sizes = sizes;
        self.state.input_lines = input_lines;
        store_state(&self.dir, &self.state)
    }

    /// Final checkpoint, marked complete.
    pub fn finish(mut self, input_lines: u64) -> Result<State> {
        self.state.complete = true;
        self.checkpoint(input_lines)?;
        Ok(self.state)
    }
}

/// `encode.json` of `dir`, if there is one.
pub fn load_state(dir: &Path) -> Result<Option<State>> {
    let p = dir.join(STATE);
    if !p.exists() {
        return Ok(None);
    }
    let s = std::fs::read_to_string(&p).map_err(io_ctx(&p))?;
    let st: State = serde_json::from_str(&s)
        .with_context(|| format!("{}: not a Tessera encode state", p.display()))?;
    ensure!(
        st.format == FORMAT,
        "{}: format {:?} is not {FORMAT}",
        p.display(),
        st.format
    );
    Ok(Some(st))
}

fn store_state(dir: &Path, st: &State) -> Result<()> {
    let p = dir.join(STATE);
    let tmp = dir.join(format!("{STATE}.tmp"));
    {
        let mut f = File::create(&tmp).map_err(io_ctx(&tmp))?;
        serde_json::to_writer_pretty(&mut f, st)?;
        f.write_all(b"\n").map_err(io_ctx(&tmp))?;
        f.sync_all().map_err(io_ctx(&tmp))?;
    }
    std::fs::rename(&tmp, &p).map_err(io_ctx(&p))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_ctx(dir))
}

/// One document read back.
#[derive(Debug, Clone)]
pub struct StoredVectors {
    pub id: String,
    pub vectors: Vec<f32>,
    pub title: String,
    pub text: String,
    pub metadata: serde_json::Value,
}

/// Streams the documents of an embeddings folder.
pub struct EmbeddingsReader {
    pub dir: PathBuf,
    pub dim: usize,
    pub doclens: Vec<u32>,
    pub tokens: u64,
    pub state: Option<State>,
    emb: BufReader<File>,
    ids: std::io::Lines<BufReader<File>>,
    docs: Option<std::io::Lines<BufReader<File>>>,
    next: usize,
}

#[derive(Deserialize)]
struct DocLine {
    id: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    metadata: serde_json::Value,
}

impl EmbeddingsReader {
    /// Opens and checks a folder: shapes, lengths and id count agree.
    pub fn open(dir: &Path) -> Result<Self> {
        let state = load_state(dir)?;
        if let Some(s) = &state {
            ensure!(
                s.complete,
                "{}: encoding did not finish (resume it with --resume)",
                dir.display()
            );
        }
        let ep = dir.join(EMBEDDINGS);
        let f = File::open(&ep).map_err(io_ctx(&ep))?;
        let file_len = f.metadata().map_err(io_ctx(&ep))?.len();
        let mut emb = BufReader::with_capacity(1 << 20, f);
        let h = read_npy_header(&ep, &mut emb)?;
        ensure!(
            h.descr == "<f4",
            "{}: dtype {} is not little-endian float32 (<f4)",
            ep.display(),
            h.descr
        );
        ensure!(
            h.shape.len() == 2 && h.shape[1] > 0,
            "{}: shape {:?} is not [tokens, dim]",
            ep.display(),
            h.shape
        );
        let (tokens, dim) = (h.shape[0], h.shape[1] as usize);
        let want = h.data_offset + tokens * dim as u64 * 4;
        ensure!(
            file_len >= want,
            "{}: {file_len} bytes, but shape {:?} needs {want}",
            ep.display(),
            h.shape
        );
        let doclens = read_doclens(dir)?;
        let sum: u64 = doclens.iter().map(|&l| l as u64).sum();
        ensure!(
            sum == tokens,
            "{}: doclens sum to {sum} tokens, but {EMBEDDINGS} has {tokens} rows",
            dir.display()
        );
        let ip = dir.join(IDS);
        let n_ids = BufReader::new(File::open(&ip).map_err(io_ctx(&ip))?)
            .lines()
            .count();
        ensure!(
            n_ids == doclens.len(),
            "{}: {n_ids} ids for {} documents",
            ip.display(),
            doclens.len()
        );
        let ids = BufReader::new(File::open(&ip).map_err(io_ctx(&ip))?).lines();
        let dp = dir.join(DOCS);
        let docs = if dp.exists() {
            Some(BufReader::new(File::open(&dp).map_err(io_ctx(&dp))?).lines())
        } else {
            None
        };
        Ok(Self {
            dir: dir.to_owned(),
            dim,
            doclens,
            tokens,
            state,
            emb,
            ids,
            docs,
            next: 0,
        })
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.doclens.len()
    }

    /// Whether the folder holds no documents.
    pub fn is_empty(&self) -> bool {
        self.doclens.is_empty()
    }

    /// The next document, or `None` after the last.
    pub fn next_doc(&mut self) -> Result<Option<StoredVectors>> {
        let Some(&n) = self.doclens.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        let line = self.next;
        let ip = self.dir.join(IDS);
        let id = self
            .ids
            .next()
            .context("ids ended early")?
            .map_err(io_ctx(&ip))?;
        let mut vectors = vec![0f32; n as usize * self.dim];
        let ep = self.dir.join(EMBEDDINGS);
        self.emb
            .read_exact(bytemuck::cast_slice_mut(&mut vectors))
            .map_err(io_ctx(&ep))?;
        let (mut title, mut text, mut metadata) =
            (String::new(), String::new(), serde_json::Value::Null);
        if let Some(docs) = &mut self.docs {
            let dp = self.dir.join(DOCS);
            let l = docs
                .next()
                .with_context(|| format!("{}: ends before document {line}", dp.display()))?
                .map_err(io_ctx(&dp))?;
            let d: DocLine = serde_json::from_str(&l)
                .with_context(|| format!("{}:{line}: not a document line", dp.display()))?;
            ensure!(
                d.id == id,
                "{}:{line}: id {:?} differs from {IDS} line {line} ({id:?})",
                dp.display(),
                d.id
            );
            (title, text, metadata) = (d.title, d.text, d.metadata);
        }
        Ok(Some(StoredVectors {
            id,
            vectors,
            title,
            text,
            metadata,
        }))
    }
}

fn read_doclens(dir: &Path) -> Result<Vec<u32>> {
    let np = dir.join(DOCLENS);
    if np.exists() {
        let f = File::open(&np).map_err(io_ctx(&np))?;
        let mut r = BufReader::new(f);
        let h = read_npy_header(&np, &mut r)?;
        ensure!(
            h.shape.len() == 1,
            "{}: shape {:?} is not 1-D",
            np.display(),
            h.shape
        );
        let n = h.shape[0] as usize;
        let width = match h.descr.as_str() {
            "<i4" | "<u4" => 4,
            "<i8" | "<u8" => 8,
            d => bail!(
                "{}: dtype {d} is not an integer type (<i4, <u4, <i8, <u8)",
                np.display()
            ),
        };
        let mut raw = Vec::new();
        r.take((n * width) as u64)
            .read_to_end(&mut raw)
            .map_err(io_ctx(&np))?;
        ensure!(raw.len() == n * width, "{}: truncated", np.display());
        return raw
            .chunks_exact(width)
            .enumerate()
            .map(|(i, c)| {
                let v: i64 = if width == 4 {
                    let b = [c[0], c[1], c[2], c[3]];
                    if h.descr == "<i4" {
                        i32::from_le_bytes(b) as i64
                    } else {
                        u32::from_le_bytes(b) as i64
                    }
                } else {
                    i64::from_le_bytes(c.try_into().expect("8 bytes"))
                };
                u32::try_from(v).map_err(|_| {
                    crate::error::err!("{}: document #{} has length {v}", np.display(), i + 1)
                })
            })
            .collect();
    }
    let jp = dir.join(DOCLENS_JSON);
    let s = std::fs::read_to_string(&jp).map_err(|e| {
        crate::error::err!("{}: no {DOCLENS} or {DOCLENS_JSON}: {e}", dir.display())
    })?;
    serde_json::from_str::<Vec<u32>>(&s)
        .with_context(|| format!("{}: expected a JSON array of lengths", jp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_round_trips() {
        let h = npy_header("<f4", &[12345, 384]);
        let got = read_npy_header(Path::new("x"), &mut &h[..]).unwrap();
        assert_eq!(got.descr, "<f4");
        assert_eq!(got.shape, vec![12345, 384]);
        assert_eq!(got.data_offset, HEADER_LEN as u64);
        let h = npy_header("<u4", &[7]);
        assert_eq!(
            read_npy_header(Path::new("x"), &mut &h[..]).unwrap().shape,
            vec![7]
        );
        assert!(read_npy_header(Path::new("x"), &mut &b"\x93NUMPY"[..]).is_err());
    }

    #[test]
    fn write_checkpoint_resume_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("emb");
        let mut w =
            EmbeddingsWriter::create(&d, 2, "in.jsonl", serde_json::json!({"m": 1})).unwrap();
        w.add("a", "T", "x", &serde_json::json!({}), &[1.0, 2.0, 3.0, 4.0])
            .unwrap();
        w.checkpoint(1).unwrap();
        // Written after the checkpoint, then "killed": resume drops it.
        w.add("b", "", "y", &serde_json::json!({}), &[9.0, 9.0])
            .unwrap();
        drop(w);
        let mut w = EmbeddingsWriter::resume(&d).unwrap();
        assert_eq!((w.state.docs, w.state.input_lines), (1, 1));
        assert_eq!(w.written_ids().unwrap(), vec!["a".to_string()]);
        assert!(
            EmbeddingsReader::open(&d).is_err(),
            "unfinished folders do not open"
        );
        w.add("c", "", "z", &serde_json::json!({"k": 2}), &[5.0, 6.0])
            .unwrap();
        w.finish(3).unwrap();
        let mut r = EmbeddingsReader::open(&d).unwrap();
        assert_eq!((r.dim, r.len(), r.tokens), (2, 2, 3));
        let a = r.next_doc().unwrap().unwrap();
        assert_eq!(
            (a.id.as_str(), a.vectors.as_slice(), a.title.as_str()),
            ("a", &[1.0, 2.0, 3.0, 4.0][..], "T")
        );
        let c = r.next_doc().unwrap().unwrap();
        assert_eq!(
            (c.id.as_str(), c.vectors.as_slice()),
            ("c", &[5.0, 6.0][..])
        );
        assert_eq!(c.metadata["k"], 2);
        assert!(r.next_doc().unwrap().is_none());
    }

    #[test]
    fn foreign_layout_with_json_doclens_and_mismatches() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut emb = npy_header("<f4", &[3, 2]);
        for x in [1f32, 0.0, 0.0, 1.0, 1.0, 1.0] {
            emb.extend_from_slice(&x.to_le_bytes());
        }
        std::fs::write(d.join(EMBEDDINGS), &emb).unwrap();
        std::fs::write(d.join(DOCLENS_JSON), "[1, 2]").unwrap();
        std::fs::write(d.join(IDS), "x\ny\n").unwrap();
        let mut r = EmbeddingsReader::open(d).unwrap();
        assert_eq!(r.next_doc().unwrap().unwrap().id, "x");
        assert_eq!(r.next_doc().unwrap().unwrap().vectors.len(), 4);
        std::fs::write(d.join(DOCLENS_JSON), "[1, 1]").unwrap();
        let e = EmbeddingsReader::open(d).err().unwrap().to_string();
        assert!(e.contains("sum to 2 tokens") && e.contains("3 rows"), "{e}");
        std::fs::write(d.join(DOCLENS_JSON), "[1, 2]").unwrap();
        std::fs::write(d.join(IDS), "x\n").unwrap();
        let e = EmbeddingsReader::open(d).err().unwrap().to_string();
        assert!(e.contains("1 ids for 2 documents"), "{e}");
    }
}
