//! Buffered documents between the builder's passes: in memory, or spilled
//! to chunk files in the staging folder (written and read back in one
//! layout), and their encoding into a segment.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use rayon::prelude::*;

use crate::codec::Codec;
use crate::error::{IndexError, Result};
use crate::kmeans;
use crate::segment::SegmentWriter;

/// Buffered documents, in memory or spilled.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    pub(crate) vectors: Vec<f32>,
    pub(crate) lens: Vec<u32>,
    /// `(id, stored JSON)` per document.
    pub(crate) docs: Vec<(String, Vec<u8>)>,
    pub(crate) bytes: usize,
}

/// Assigns, encodes and appends the documents of `chunk` to `writer`.
pub(crate) fn encode_chunk(
    chunk: &ChunkView<'_>,
    codec: &Codec,
    centroids: &[f32],
    dim: usize,
    assign_probe: usize,
    writer: &mut SegmentWriter,
) -> Result<()> {
    let codes = kmeans::assign_probing(chunk.vectors, centroids, dim, assign_probe);
    let bpt = codec.bytes_per_token();
    let mut bytes = vec![0u8; codes.len() * bpt];
    bytes
        .par_chunks_mut(bpt * 1024)
        .zip(chunk.vectors.par_chunks(dim * 1024))
        .zip(codes.par_chunks(1024))
        .for_each_init(Vec::new, |buf: &mut Vec<u8>, ((out, vs), cs)| {
            buf.clear();
            for (v, &c) in vs.chunks_exact(dim).zip(cs) {
                codec.encode(v, &centroids[c as usize * dim..(c as usize + 1) * dim], buf);
            }
            out.copy_from_slice(buf);
        });
    let mut tok = 0usize;
    for (len, (id, stored)) in chunk.lens.iter().zip(chunk.docs) {
        let n = *len as usize;
        writer.add(
            id,
            stored,
            &codes[tok..tok + n],
            &bytes[tok * bpt..(tok + n) * bpt],
        )?;
        tok += n;
    }
    Ok(())
}

/// Borrowed view of buffered documents.
pub(crate) struct ChunkView<'a> {
    pub vectors: &'a [f32],
    pub lens: &'a [u32],
    pub docs: &'a [(String, Vec<u8>)],
}

impl Chunk {
    pub(crate) fn view(&self) -> ChunkView<'_> {
        ChunkView {
            vectors: &self.vectors,
            lens: &self.lens,
            docs: &self.docs,
        }
    }
}

pub(crate) fn write_chunk(path: &Path, c: &Chunk) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| IndexError::io(path, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let io = |e| IndexError::io(path, e);
    w.write_all(&(c.lens.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(bytemuck::cast_slice(&c.lens)).map_err(io)?;
    w.write_all(bytemuck::cast_slice(&c.vectors)).map_err(io)?;
    for (id, stored) in &c.docs {
        w.write_all(&(id.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(id.as_bytes()).map_err(io)?;
        w.write_all(&(stored.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(stored).map_err(io)?;
    }
    w.flush().map_err(io)
}

pub(crate) fn read_chunk(path: &Path, dim: usize) -> Result<Chunk> {
    let f = std::fs::File::open(path).map_err(|e| IndexError::io(path, e))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let io = |e| IndexError::io(path, e);
    let mut u64buf = [0u8; 8];
    let mut read_u64 = |r: &mut BufReader<std::fs::File>| -> Result<usize> {
        r.read_exact(&mut u64buf).map_err(io)?;
        Ok(u64::from_le_bytes(u64buf) as usize)
    };
    let n = read_u64(&mut r)?;
    let mut lens = vec![0u32; n];
    r.read_exact(bytemuck::cast_slice_mut(&mut lens))
        .map_err(io)?;
    let tokens: usize = lens.iter().map(|&l| l as usize).sum();
    let mut vectors = vec![0f32; tokens * dim];
    r.read_exact(bytemuck::cast_slice_mut(&mut vectors))
        .map_err(io)?;
    let mut docs = Vec::with_capacity(n);
    for _ in 0..n {
        let l = read_u64(&mut r)?;
        let mut id = vec![0u8; l];
        r.read_exact(&mut id).map_err(io)?;
        let l = read_u64(&mut r)?;
        let mut stored = vec![0u8; l];
        r.read_exact(&mut stored).map_err(io)?;
        let id = String::from_utf8(id)
            .map_err(|_| IndexError::corrupt(path, "chunk id is not UTF-8"))?;
        docs.push((id, stored));
    }
    Ok(Chunk {
        vectors,
        lens,
        docs,
        bytes: 0,
    })
}
