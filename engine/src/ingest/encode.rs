//! Encoding a document dump into an embeddings folder (see
//! [`crate::embeddings`]), resumably: records are read and checked, tokenised
//! and encoded in groups while the previous group is written, with a
//! checkpoint after each group. An index build from a dump runs this into a
//! work folder first ([`super::build_from_input`]).

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tessera_model::tokenize::TokenizedText;
use tessera_model::{Encoder, TextKind};

use crate::corpus::{
    compression_of, BadRecord, CorpusOptions, CorpusReader, Format, Problem, Record,
};
use crate::embeddings::{load_state, EmbeddingsWriter, State};
use crate::error::{bail, ensure, Context, Result};
use crate::model::model_info;
use crate::progress;

/// How to read a dump's records and what to do with bad ones.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// Record format (`None`: from the extension; JSONL for `-`).
    pub format: Option<Format>,
    /// JSONL: the document id field (`_id`, falling back to `id`).
    pub id_field: String,
    /// JSONL: fields encoded, in order; `title` is stored as the title.
    pub text_fields: Vec<String>,
    /// Skip malformed lines, missing ids or text fields, duplicate ids and
    /// invalid UTF-8 (counted per kind) instead of stopping.
    pub skip_invalid: bool,
}

impl Default for RecordOptions {
    /// BEIR `corpus.jsonl`: `_id`, `title` and `text`; stop at a bad record.
    fn default() -> Self {
        Self {
            format: None,
            id_field: "_id".into(),
            text_fields: vec!["title".into(), "text".into()],
            skip_invalid: false,
        }
    }
}

/// A dump and how to read it.
#[derive(Debug, Clone)]
pub struct Input {
    /// The dump: BEIR corpus.jsonl, any JSONL or TSV, optionally .gz or
    /// .zst; `-` is standard input.
    pub input: PathBuf,
    /// How its records are read.
    pub records: RecordOptions,
}

impl Input {
    /// The reader's options for this dump.
    pub fn corpus_options(&self) -> CorpusOptions {
        CorpusOptions {
            format: self.records.format,
            id_field: self.records.id_field.clone(),
            text_fields: self.records.text_fields.clone(),
        }
    }
}

/// `", skipped: 2 duplicate id, 1 malformed JSON"` or nothing.
pub fn skipped_note(skipped: &BTreeMap<String, u64>) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = skipped.iter().map(|(k, v)| format!("{v} {k}")).collect();
    format!("; skipped {}", parts.join(", "))
}

/// What a bad-record error tells the user to do next: only options of the
/// command it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rerun {
    /// `encode-corpus` and `index build`: rerun with `--resume`.
    WithResume,
    /// `eval`: its cached encoding resumes by itself.
    Automatically,
    /// `index add`: nothing is kept; rerun from the start.
    FromScratch,
}

/// Lines in a plain (uncompressed) file, for the progress bar's total.
fn count_lines(path: &Path) -> Option<u64> {
    if path == Path::new("-") || compression_of(path).is_some() {
        return None;
    }
    let f = std::fs::File::open(path).ok()?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    let mut n = 0u64;
    loop {
        let buf = r.fill_buf().ok()?;
        if buf.is_empty() {
            return Some(n);
        }
        n += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let len = buf.len();
        r.consume(len);
    }
}

/// Fault injection for the crash tests: abort the process right after the
/// given number of checkpoints (`TESSERA_FAULT_ABORT_AFTER_CHECKPOINTS`).
fn abort_after_checkpoints() -> Option<u64> {
    std::env::var("TESSERA_FAULT_ABORT_AFTER_CHECKPOINTS")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// Encodes the documents of `input` into the embeddings folder `out`,
/// checkpointing every `group` documents; with `resume`, continues from the
/// folder's last checkpoint.
pub fn encode_to_dir(
    encoder: &Encoder,
    input: &Input,
    out: &Path,
    resume: bool,
    group: usize,
    rerun: Rerun,
) -> Result<State> {
    let info = model_info(encoder);
    let input_name = input.input.display().to_string();
    let mut writer = match (resume, load_state(out)?) {
        (true, Some(st)) if !st.complete => {
            if st.model["path"] != info["path"] {
                bail!(
                    "{}: was encoded with model {}, not {}; resume with the same --model",
                    out.display(),
                    st.model["path"],
                    info["path"]
                );
            }
            let precision =
                |m: &serde_json::Value| m["precision"].as_str().unwrap_or("fp32").to_owned();
            if precision(&st.model) != precision(&info) {
                bail!(
                    "{}: was encoded in {} precision, not {}; resume with --precision {}",
                    out.display(),
                    precision(&st.model),
                    precision(&info),
                    precision(&st.model)
                );
            }
            if st.input != input_name {
                bail!(
                    "{}: was encoding {:?}, not {input_name:?}; resume with the same --input",
                    out.display(),
                    st.input
                );
            }
            tracing::info!(
                docs = st.docs,
                lines = st.input_lines,
                "resuming from checkpoint"
            );
            EmbeddingsWriter::resume(out)?
        }
        (true, Some(_)) => bail!(
            "{}: encoding finished already; nothing to resume",
            out.display()
        ),
        (_, st) => {
            if st.is_some() {
                bail!(
                    "{}: holds an interrupted run; continue it with --resume, or remove the folder",
                    out.display()
                );
            }
            EmbeddingsWriter::create(out, encoder.dim(), &input_name, info)?
        }
    };
    let mut reader = CorpusReader::open(&input.input, input.corpus_options())?;
    let resumed_lines = writer.state.input_lines as usize;
    reader.skip_lines(resumed_lines)?;
    let seen: HashSet<String> = writer.written_ids()?.into_iter().collect();

    let pb = progress::bar(count_lines(&input.input), "lines");
    pb.set_prefix("encoding");
    pb.set_position(resumed_lines as u64);
    let skip_invalid = input.records.skip_invalid;
    let tokenizer = encoder.tokenizer();
    let name = reader.name().to_owned();

    // Three stages on their own threads, joined by queues of PIPELINE_DEPTH
    // groups (so at most a few groups are in memory): read + validate +
    // tokenise | the model | write + checkpoint. The model has the CPUs
    // nearly to itself; the other two stages fill its idle moments.
    // Groups stay in input order and each checkpoint is written after its
    // group, exactly as a serial loop would, so resuming is unchanged.
    let (to_model, from_reader) = mpsc::sync_channel::<Result<Group>>(PIPELINE_DEPTH);
    let (to_writer, from_model) = mpsc::sync_channel::<Result<Encoded>>(PIPELINE_DEPTH);
    std::thread::scope(|scope| -> Result<State> {
        scope.spawn(move || read_groups(&mut reader, seen, tokenizer, group, &to_model));
        let name_ref = &name;
        let writing = scope.spawn(move || {
            let complete = write_groups(&mut writer, from_model, &pb, skip_invalid, rerun)?;
            pb.finish_and_clear();
            // A reader that stopped without an error (a bug) must not make
            // a partial encoding look finished.
            ensure!(
                complete,
                "{name_ref}: reading stopped before the end of the input"
            );
            Ok::<_, crate::error::EngineError>(writer)
        });
        // The model, on this thread (libtorch's own threads under it).
        for g in from_reader {
            let g = match g {
                Ok(g) => g,
                Err(e) => {
                    let _ = to_writer.send(Err(e));
                    break;
                }
            };
            let encoded = encoder
                .encode_tokenized(&g.tokenized, TextKind::Document, &mut |_| {})
                .context("encoding documents");
            let failed = encoded.is_err();
            let out = encoded.map(|output| Encoded { group: g, output });
            // A closed queue: the writer stopped on an error it reports.
            if to_writer.send(out).is_err() || failed {
                break;
            }
        }
        drop(to_writer);
        let writer = writing
            .join()
            .map_err(|_| crate::error::err!("the index writer thread panicked"))??;
        if writer.state.docs == 0 {
            bail!("{name}: no documents to index");
        }
        let lines = writer.state.input_lines;
        writer.finish(lines)
    })
}

/// Groups of records in flight between pipeline stages.
const PIPELINE_DEPTH: usize = 2;

/// One group of input records, validated and tokenised.
struct Group {
    /// Valid records and rejected ones, in input order.
    records: Vec<Record>,
    bad: Vec<BadRecord>,
    /// The non-empty records' tokenised texts, in order.
    tokenized: Vec<TokenizedText>,
    /// Input lines read once this group is complete.
    lines: u64,
    /// The last group of the input.
    last: bool,
}

/// A group with its model output.
struct Encoded {
    group: Group,
    output: tessera_model::EncodeOutput,
}

/// Stage 1: reads, validates (duplicate ids against `seen`) and tokenises
/// groups of `group` valid records. Stops at the end of the input, on a
/// read error (sent on) or when the next stage has gone.
fn read_groups(
    reader: &mut CorpusReader,
    mut seen: HashSet<String>,
    tokenizer: &tessera_model::tokenize::ColbertTokenizer,
    group: usize,
    out: &mpsc::SyncSender<Result<Group>>,
) {
    loop {
        let mut records: Vec<Record> = Vec::with_capacity(group);
        let mut bad = Vec::new();
        let mut last = false;
        while records.len() < group {
            let Some(next) = reader.next_record() else {
                last = true;
                break;
            };
            let rec = match next {
                Err(e) => {
                    let _ = out.send(Err(e));
                    return;
                }
                Ok(Ok(r)) if seen.contains(&r.id) => Err(BadRecord {
                    path: reader.name().to_owned(),
                    line: r.line,
                    problem: Problem::DuplicateId,
                    detail: format!("{:?} appeared earlier", r.id),
                }),
                Ok(other) => other,
            };
            match rec {
                Ok(r) => {
                    seen.insert(r.id.clone());
                    records.push(r);
                }
                Err(b) => bad.push(b),
            }
        }
        // Empty documents are stored with no vectors; the rest are encoded.
        let texts: Vec<String> = records
            .iter()
            .filter(|r| !r.is_empty())
            .map(Record::encoded_text)
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tokenized = tokenizer
            .encode_batch(&refs, TextKind::Document)
            .context("tokenising documents");
        let g = tokenized.map(|tokenized| Group {
            records,
            bad,
            tokenized,
            lines: reader.line() as u64,
            last,
        });
        let failed = g.is_err();
        if out.send(g).is_err() || failed || last {
            return;
        }
    }
}

/// Stage 3: writes each group's documents and bad-record counts, then
/// checkpoints (except after the last group, which `finish` seals).
/// Returns whether the last group arrived.
fn write_groups(
    writer: &mut EmbeddingsWriter,
    from: mpsc::Receiver<Result<Encoded>>,
    pb: &indicatif::ProgressBar,
    skip_invalid: bool,
    rerun: Rerun,
) -> Result<bool> {
    let started = std::time::Instant::now();
    let start_tokens = writer.state.tokens;
    let abort_at = abort_after_checkpoints();
    let mut checkpoints = 0u64;
    for e in from {
        let Encoded { group: g, output } = e?;
        let mut bad = g.bad.into_iter().peekable();
        let mut items = output.items.iter();
        for r in &g.records {
            // Bad records before this one, in input order.
            while let Some(b) = bad.next_if(|b| b.line < r.line) {
                reject(&mut writer.state, b, skip_invalid, rerun)?;
            }
            let vectors: &[f32] = if r.is_empty() {
                &[]
            } else {
                let item = items.next().expect("one encoding per non-empty record");
                if item.empty {
                    &[] // only punctuation or special characters
                } else {
                    item.vectors.as_slice()
                }
            };
            writer.add(&r.id, &r.title, &r.text, &r.metadata, vectors)?;
        }
        for b in bad {
            reject(&mut writer.state, b, skip_invalid, rerun)?;
        }
        writer.state.truncated += output.truncated as u64;
        if g.last {
            writer.state.input_lines = g.lines;
            return Ok(true);
        }
        writer.checkpoint(g.lines)?;
        checkpoints += 1;
        pb.set_position(g.lines);
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        pb.set_message(format!(
            "{} docs, {:.0} tokens/s",
            writer.state.docs,
            (writer.state.tokens - start_tokens) as f64 / secs
        ));
        if abort_at == Some(checkpoints) {
            std::process::abort();
        }
    }
    Ok(false)
}

/// A bad record either stops the job (the default) or is counted.
fn reject(state: &mut State, bad: BadRecord, skip: bool, rerun: Rerun) -> Result<()> {
    if skip {
        tracing::debug!("skipping {bad}");
        *state.skipped.entry(bad.problem.to_string()).or_default() += 1;
        return Ok(());
    }
    match rerun {
        Rerun::WithResume => bail!(
            "{bad}\n  nothing was indexed; fix the input and rerun with --resume to continue \
             from the last checkpoint, or pass --skip-invalid to skip such records"
        ),
        Rerun::Automatically => bail!(
            "{bad}\n  nothing was evaluated; fix the input and rerun (encoding continues \
             from the last checkpoint), or pass --skip-invalid to skip such records"
        ),
        Rerun::FromScratch => bail!(
            "{bad}\n  nothing was added; fix the input and rerun, or pass --skip-invalid \
             to skip such records"
        ),
    }
}
