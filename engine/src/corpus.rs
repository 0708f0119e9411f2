//! Streaming document dumps: BEIR `corpus.jsonl`, any JSONL with chosen id
//! and text fields, TSV (`id<TAB>text[<TAB>title]`, MS MARCO
//! `collection.tsv` style), each optionally gzip- or zstd-compressed (by
//! extension), or standard input (`-`).
//!
//! Records come out one at a time, so memory does not grow with the dump.
//! A record that cannot be used comes out as a [`BadRecord`] naming the file,
//! line and kind of problem; the caller decides whether to stop or skip.
//! Duplicate ids are the caller's business (it knows what it kept).

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{bail, Context, Result};
use serde_json::Value;

/// Layout of the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// `id<TAB>text` per line.
    Tsv,
}

/// How to read a dump.
#[derive(Debug, Clone)]
pub struct CorpusOptions {
    /// `None`: from the file extension (`.jsonl`/`.json` → JSONL,
    /// `.tsv`/`.txt` → TSV; `-` → JSONL).
    pub format: Option<Format>,
    /// JSONL: the id field (`_id`; `id` is accepted when `_id` is absent).
    pub id_field: String,
    /// JSONL: fields joined (in order, blank-separated) into the encoded
    /// text. A field named `title` is stored as the title, the rest as text.
    pub text_fields: Vec<String>,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        Self {
            format: None,
            id_field: "_id".into(),
            text_fields: vec!["title".into(), "text".into()],
        }
    }
}

/// One usable document.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based line in the input.
    pub line: usize,
    pub id: String,
    pub title: String,
    pub text: String,
    pub metadata: Value,
}

impl Record {
    /// Neither a title nor a text: indexed with no token vectors.
    pub fn is_empty(&self) -> bool {
        self.title.trim().is_empty() && self.text.trim().is_empty()
    }

    /// What the encoder sees: title and text, blank-separated.
    pub fn encoded_text(&self) -> String {
        encoded_text(&self.title, &self.text)
    }
}

/// What the encoder sees of a document: its title and text,
/// blank-separated (either alone when the other is blank).
pub fn encoded_text(title: &str, text: &str) -> String {
    match (title.trim().is_empty(), text.trim().is_empty()) {
        (true, _) => text.to_owned(),
        (false, true) => title.to_owned(),
        (false, false) => format!("{title} {text}"),
    }
}

/// Kinds of unusable records (counted separately with `--skip-invalid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    MalformedJson,
    MissingId,
    MissingText,
    DuplicateId,
    InvalidUtf8,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MalformedJson => "malformed JSON",
            Self::MissingId => "missing id",
            Self::MissingText => "missing text field",
            Self::DuplicateId => "duplicate id",
            Self::InvalidUtf8 => "invalid UTF-8",
        })
    }
}

/// An unusable record: where and why.
#[derive(Debug, Clone)]
pub struct BadRecord {
    pub path: String,
    pub line: usize,
    pub problem: Problem,
    pub detail: String,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.path, self.line, self.problem, self.detail
        )
    }
}

/// Reads records from a dump, one line at a time.
pub struct CorpusReader {
    name: String,
    format: Format,
    opts: CorpusOptions,
    lines: Box<dyn BufRead + Send>,
    line: usize,
    buf: Vec<u8>,
}

/// Compression of a dump, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

/// `.gz` → gzip, `.zst`/`.zstd` → zstd, anything else → none.
pub fn compression_of(path: &Path) -> Option<Compression> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("gz") => Some(Compression::Gzip),
        Some("zst" | "zstd") => Some(Compression::Zstd),
        _ => None,
    }
}

/// Opens `path` (`-` for standard input), decompressing `.gz` and `.zst`.
pub fn open_input(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let raw: Box<dyn Read + Send> = match compression_of(path) {
        Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(f))),
        Some(Compression::Zstd) => Box::new(
            ruzstd::decoding::StreamingDecoder::new(BufReader::new(f))
                .map_err(|e| crate::error::err!("{}: not a zstd stream: {e}", path.display()))?,
        ),
        None => Box::new(f),
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, raw)))
}

/// The format a path's name implies, compression extension stripped.
pub fn format_of(path: &Path) -> Option<Format> {
    if path == Path::new("-") {
        return Some(Format::Jsonl);
    }
    let mut p: PathBuf = path.to_owned();
    if compression_of(&p).is_some() {
        p.set_extension("");
    }
    match p.extension().and_then(|e| e.to_str()) {
        Some("jsonl" | "json" | "ndjson") => Some(Format::Jsonl),
        Some("tsv" | "txt") => Some(Format::Tsv),
        _ => None,
    }
}

impl CorpusReader {
    pub fn open(path: &Path, opts: CorpusOptions) -> Result<Self> {
        let format = match opts.format.or_else(|| format_of(path)) {
            Some(f) => f,
            None => bail!(
                "{}: cannot tell the format from the name; pass --format jsonl or --format tsv",
                path.display()
            ),
        };
        if format == Format::Jsonl && opts.text_fields.is_empty() {
            bail!("--text-fields needs at least one field");
        }
        Ok(Self {
            name: if path == Path::new("-") {
                "<stdin>".into()
            } else {
                path.display().to_string()
            },
            format,
            opts,
            lines: open_input(path)?,
            line: 0,
            buf: Vec::new(),
        })
    }

    /// Lines read so far.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The input's name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Skips `n` lines (resuming), without parsing them.
    pub fn skip_lines(&mut self, n: usize) -> Result<()> {
        while self.line < n {
            self.buf.clear();
            let got = self
                .lines
                .read_until(b'\n', &mut self.buf)
                .with_context(|| format!("{}: read error", self.name))?;
            if got == 0 {
                bail!(
                    "{}: has {} lines, but the checkpoint had read {n}: is this the same input?",
                    self.name,
                    self.line
                );
            }
            self.line += 1;
        }
        Ok(())
    }

    /// The next record: `None` at the end, `Some(Err)` for an I/O error
    /// (fatal), `Some(Ok(Err(bad)))` for an unusable record.
    pub fn next_record(&mut self) -> Option<Result<std::result::Result<Record, BadRecord>>> {
        loop {
            self.buf.clear();
            match self.lines.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    return Some(Err(crate::error::EngineError::Context {
                        context: format!("{}:{}: read error", self.name, self.line + 1),
                        source: Box::new(e.into()),
                    }))
                }
            }
            self.line += 1;
            while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                self.buf.pop();
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines are not records
            }
            let line = self.line;
            let bad = |problem, detail: String| {
                Some(Ok(Err(BadRecord {
                    path: self.name.clone(),
                    line,
                    problem,
                    detail,
                })))
            };
            let s = match std::str::from_utf8(&self.buf) {
                Ok(s) => s,
                Err(e) => {
                    return bad(
                        Problem::InvalidUtf8,
                        format!("at byte {}", e.valid_up_to() + 1),
                    )
                }
            };
            let parsed = match self.format {
                Format::Jsonl => self.parse_json(s, line),
                Format::Tsv => parse_tsv(s, line),
            };
            return match parsed {
                Ok(r) => Some(Ok(Ok(r))),
                Err((p, d)) => bad(p, d),
            };
        }
    }

    fn parse_json(&self, s: &str, line: usize) -> std::result::Result<Record, (Problem, String)> {
        let v: Value =
            serde_json::from_str(s).map_err(|e| (Problem::MalformedJson, e.to_string()))?;
        let Value::Object(obj) = v else {
            return Err((
                Problem::MalformedJson,
                "a line must be a JSON object".into(),
            ));
        };
        let idf = &self.opts.id_field;
        let id_value = obj
            .get(idf)
            .or_else(|| (idf == "_id").then(|| obj.get("id")).flatten());
        let id = match id_value {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => {
                return Err((
                    Problem::MissingId,
                    format!("field {idf:?} must be a string or number, got {other}"),
                ))
            }
            None => return Err((Problem::MissingId, format!("no field {idf:?}"))),
        };
        check_id(&id)?;
        let (mut title, mut texts) = (String::new(), Vec::new());
        let mut found = false;
        for f in &self.opts.text_fields {
            match obj.get(f) {
                Some(Value::String(s)) => {
                    found = true;
                    if f == "title" {
                        title = s.clone();
                    } else {
                        texts.push(s.as_str());
                    }
                }
                Some(Value::Null) | None => {}
                Some(other) => {
                    return Err((
                        Problem::MissingText,
                        format!("field {f:?} must be a string, got {}", kind(other)),
                    ))
                }
            }
        }
        if !found {
            return Err((
                Problem::MissingText,
                format!("none of the text fields {:?}", self.opts.text_fields),
            ));
        }
        // An empty title and text is still a document (Cranfield and several
        // BEIR corpora ship some, and qrels may judge them): it is indexed
        // with no content tokens.
        let text = texts.join(" ");
        let metadata = match obj.get("metadata") {
            Some(m @ Value::Object(_)) => m.clone(),
            _ => Value::Object(Default::default()),
        };
        Ok(Record {
            line,
            id,
            title,
            text,
            metadata,
        })
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_id(id: &str) -> std::result::Result<(), (Problem, String)> {
    tessera_index::check_id(id).map_err(|m| (Problem::MissingId, m))
}

fn parse_tsv(s: &str, line: usize) -> std::result::Result<Record, (Problem, String)> {
    let mut cols = s.split('\t');
    let id = cols.next().unwrap_or("").to_owned();
    check_id(&id)?;
    let text = match cols.next() {
        Some(t) => t.to_owned(),
        None => return Err((Problem::MissingText, "expected `id<TAB>text`".into())),
    };
    let title = cols.next().unwrap_or("").to_owned();
    Ok(Record {
        line,
        id,
        title,
        text,
        metadata: Value::Object(Default::default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(path: &Path, opts: CorpusOptions) -> Vec<std::result::Result<Record, BadRecord>> {
        let mut r = CorpusReader::open(path, opts).unwrap();
        let mut out = Vec::new();
        while let Some(x) = r.next_record() {
            out.push(x.unwrap());
        }
        out
    }

    #[test]
    fn beir_jsonl_plain_gzip_and_zstd_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let body = concat!(
            r#"{"_id": "a", "title": "T1", "text": "first doc", "metadata": {"year": 2020}}"#,
            "\n\n",
            r#"{"_id": 7, "title": "", "text": "second"}"#,
            "\r\n"
        );
        let plain = dir.path().join("c.jsonl");
        std::fs::write(&plain, body).unwrap();
        let gz = dir.path().join("c.jsonl.gz");
        let mut e = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        e.write_all(body.as_bytes()).unwrap();
        e.finish().unwrap();
        let zst = dir.path().join("c.jsonl.zst");
        std::fs::write(
            &zst,
            ruzstd::encoding::compress_to_vec(
                body.as_bytes(),
                ruzstd::encoding::CompressionLevel::Fastest,
            ),
        )
        .unwrap();
        let want = read_all(&plain, CorpusOptions::default());
        assert_eq!(want.len(), 2);
        let a = want[0].as_ref().unwrap();
        assert_eq!((a.id.as_str(), a.title.as_str(), a.line), ("a", "T1", 1));
        assert_eq!(a.metadata["year"], 2020);
        assert_eq!(a.encoded_text(), "T1 first doc");
        let b = want[1].as_ref().unwrap();
        assert_eq!(
            (b.id.as_str(), b.line, b.encoded_text().as_str()),
            ("7", 3, "second")
        );
        for p in [&gz, &zst] {
            let got = read_all(p, CorpusOptions::default());
            assert_eq!(
                got.iter()
                    .map(|r| r.as_ref().unwrap().clone())
                    .collect::<Vec<_>>(),
                want.iter()
                    .map(|r| r.as_ref().unwrap().clone())
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn bad_records_name_line_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        let mut body = Vec::new();
        body.extend_from_slice(b"{\"_id\": \"ok\", \"text\": \"fine\"}\n");
        body.extend_from_slice(b"{\"_id\": \"x\", \"text\": \n");
        body.extend_from_slice(b"{\"text\": \"no id\"}\n");
        body.extend_from_slice(b"{\"_id\": \"y\"}\n");
        body.extend_from_slice(b"{\"_id\": \"z\", \"title\": \" \", \"text\": \"\"}\n");
        body.extend_from_slice(b"{\"_id\": \"u\", \"text\": \"caf\xe9\"}\n");
        std::fs::write(&p, body).unwrap();
        let got = read_all(&p, CorpusOptions::default());
        let problems: Vec<(usize, Problem)> = got
            .iter()
            .filter_map(|r| r.as_ref().err().map(|b| (b.line, b.problem)))
            .collect();
        assert_eq!(
            problems,
            vec![
                (2, Problem::MalformedJson),
                (3, Problem::MissingId),
                (4, Problem::MissingText),
                (6, Problem::InvalidUtf8),
            ]
        );
        assert!(
            got[4].as_ref().unwrap().is_empty(),
            "an empty document is a record"
        );
        let msg = got[1].as_ref().unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("{}:2: malformed JSON", p.display())),
            "{msg}"
        );
    }

    #[test]
    fn tsv_and_custom_fields() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("collection.tsv");
        std::fs::write(&p, "0\tThe first passage.\n1\t\n2\tThird.\tA title\n").unwrap();
        let got = read_all(&p, CorpusOptions::default());
        assert_eq!(got[0].as_ref().unwrap().text, "The first passage.");
        assert!(got[1].as_ref().unwrap().is_empty());
        assert_eq!(got[2].as_ref().unwrap().title, "A title");

        let p = dir.path().join("dump.json");
        std::fs::write(&p, r#"{"docid": "d1", "body": "b", "abstract": "a"}"#).unwrap();
        let opts = CorpusOptions {
            id_field: "docid".into(),
            text_fields: vec!["abstract".into(), "body".into()],
            ..Default::default()
        };
        let got = read_all(&p, opts);
        let r = got[0].as_ref().unwrap();
        assert_eq!((r.id.as_str(), r.text.as_str()), ("d1", "a b"));
        assert!(CorpusReader::open(&dir.path().join("x.bin"), CorpusOptions::default()).is_err());
    }
}
