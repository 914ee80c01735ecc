//! Compact binary format: a forward model and optionally its backward twin, read back in
//! one bulk read.
//!
//! Layout (little-endian, every array 8-byte aligned):
//! `magic "KEXUELM\0"`, `version u32`, `models u32`, `payload_len u64`, `crc32 u32`, pad,
//! then the payload (checksummed): per model `order u64`, `vocab_len u64`, `vocab_bytes u64`,
//! one `(entries u64, slots u64)` per order ≥ 2, the vocabulary (words joined by NUL), the
//! unigram `(prob f32, backoff f32)` pairs, then per order the keys (`u32`, newest word
//! first) and the hash slots (`key u64, prob f32, backoff f32`). The hash tables are stored
//! as built, so loading does no hashing.

use std::path::Path;

use super::model::{Model, ProbBackoff, Slot, Table, MAX_ORDER};
use super::vocab::Vocab;
use super::write_atomically;
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"KEXUELM\0";
pub const VERSION: u32 = 1;
const HEADER: usize = 32;

struct Out(Vec<u8>);

impl Out {
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn align(&mut self) {
        while self.0.len() % 8 != 0 {
            self.0.push(0);
        }
    }
}

fn encode_model(out: &mut Out, m: &Model) {
    let vocab: Vec<u8> = m.vocab.words().collect::<Vec<_>>().join("\0").into_bytes();
    out.u64(m.order() as u64);
    out.u64(m.vocab.len() as u64);
    out.u64(vocab.len() as u64);
    for t in &m.tables {
        out.u64(t.len() as u64);
        out.u64(t.slots.len() as u64);
    }
    out.0.extend_from_slice(&vocab);
    out.align();
    for u in &m.unigrams {
        out.0.extend_from_slice(&u.prob.to_le_bytes());
        out.0.extend_from_slice(&u.backoff.to_le_bytes());
    }
    for t in &m.tables {
        for k in &t.keys {
            out.0.extend_from_slice(&k.to_le_bytes());
        }
        out.align();
        for s in &t.slots {
            out.u64(s.key);
            out.0.extend_from_slice(&s.prob.to_le_bytes());
            out.0.extend_from_slice(&s.backoff.to_le_bytes());
        }
    }
}

/// The binary image of `forward` (and `backward`, which must share its vocabulary).
pub fn to_bytes(forward: &Model, backward: Option<&Model>) -> Vec<u8> {
    let mut out = Out(vec![0; HEADER]);
    encode_model(&mut out, forward);
    if let Some(b) = backward {
        encode_model(&mut out, b);
    }
    let payload = &out.0[HEADER..];
    let crc = crc32fast::hash(payload);
    let len = payload.len() as u64;
    let models: u32 = if backward.is_some() { 2 } else { 1 };
    let h = &mut out.0[..HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&models.to_le_bytes());
    h[16..24].copy_from_slice(&len.to_le_bytes());
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    out.0
}

/// Writes [`to_bytes`] to `path` (temporary file, then rename).
pub fn save(path: &Path, forward: &Model, backward: Option<&Model>) -> Result<()> {
    let bytes = to_bytes(forward, backward);
    write_atomically(path, |f| std::io::Write::write_all(f, &bytes))
}

/// Reads a file written by [`save`]: the forward model and the backward one if stored.
pub fn load(path: &Path) -> Result<(Model, Option<Model>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes, path)
}

/// Bounds-checked reader; every failure names the source and the byte offset.
struct In<'a> {
    bytes: &'a [u8],
    pos: usize,
    source: &'a Path,
}

impl<'a> In<'a> {
    fn err(&self, message: String) -> Error {
        Error::format(self.source, 0, message)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.bytes.len() => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(self.err(format!(
                "truncated or corrupt: {what} needs {n} bytes at offset {}, the data has {}",
                self.pos,
                self.bytes.len()
            ))),
        }
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    /// A size that must fit in what is left of the data (so a corrupt size cannot ask for
    /// terabytes) when each element takes `each` bytes.
    fn size(&mut self, what: &str, each: usize) -> Result<usize> {
        let v = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if v.saturating_mul(each as u64) > left {
            return Err(self.err(format!(
                "corrupt: {what} = {v} does not fit in the {left} bytes left"
            )));
        }
        Ok(v as usize)
    }

    fn align(&mut self) -> Result<()> {
        let pad = (8 - self.pos % 8) % 8;
        self.take(pad, "padding").map(|_| ())
    }
}

fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn decode_model(r: &mut In) -> Result<Model> {
    let order = r.u64("order")?;
    if !(1..=MAX_ORDER as u64).contains(&order) {
        return Err(r.err(format!("corrupt: order {order} is not in 1..={MAX_ORDER}")));
    }
    let order = order as usize;
    let vocab_len = r.size("vocabulary size", 8)?;
    let vocab_bytes = r.size("vocabulary bytes", 1)?;
    let mut sizes = Vec::with_capacity(order - 1);
    for n in 2..=order {
        let entries = r.size(&format!("{n}-gram count"), 4 * n)?;
        let slots = r.size(&format!("{n}-gram slots"), 16)?;
        if slots <= entries {
            return Err(r.err(format!("corrupt: {n}-gram table has no empty slot")));
        }
        sizes.push((entries, slots));
    }
    let text = r.take(vocab_bytes, "vocabulary")?;
    let text = std::str::from_utf8(text)
        .map_err(|_| r.err("corrupt: the vocabulary is not UTF-8".into()))?;
    let mut vocab = Vocab::new();
    for (i, w) in text.split('\0').enumerate() {
        if vocab.insert(w) as usize != i {
            return Err(r.err(format!("corrupt: vocabulary word {i} ({w:?}) repeats")));
        }
    }
    if vocab.len() != vocab_len {
        return Err(r.err(format!(
            "corrupt: vocabulary has {} words, the header says {vocab_len}",
            vocab.len()
        )));
    }
    r.align()?;
    let uni = r.take(vocab_len * 8, "unigrams")?;
    let unigrams = (0..vocab_len)
        .map(|i| ProbBackoff {
            prob: f32_at(uni, 8 * i),
            backoff: f32_at(uni, 8 * i + 4),
        })
        .collect();
    let mut tables = Vec::with_capacity(order - 1);
    for (n, &(entries, slots)) in (2..).zip(&sizes) {
        let k = r.take(entries * n * 4, "n-gram keys")?;
        let keys: Vec<u32> = k
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(bad) = keys.iter().find(|&&id| id as usize >= vocab_len) {
            return Err(r.err(format!("corrupt: word id {bad} is out of the vocabulary")));
        }
        r.align()?;
        let s = r.take(slots * 16, "hash slots")?;
        let slots = s
            .chunks_exact(16)
            .map(|c| Slot {
                key: u64::from_le_bytes(c[..8].try_into().unwrap_or([0; 8])),
                prob: f32_at(c, 8),
                backoff: f32_at(c, 12),
            })
            .collect();
        tables.push(Table { n, keys, slots });
    }
    Ok(Model::from_marked_parts(vocab, unigrams, tables))
}

/// Parses a binary image; `source` names it in errors.
pub fn from_bytes(bytes: &[u8], source: &Path) -> Result<(Model, Option<Model>)> {
    let mut r = In {
        bytes,
        pos: 0,
        source,
    };
    let magic = r.take(8, "magic")?;
    if magic != MAGIC {
        return Err(r.err(format!(
            "not a kexue n-gram model: magic {:?}, expected {:?}",
            String::from_utf8_lossy(magic),
            String::from_utf8_lossy(MAGIC)
        )));
    }
    let b = r.take(HEADER - 8, "header")?;
    let version = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if version != VERSION {
        return Err(r.err(format!(
            "format version {version} is not supported (this kexue reads version {VERSION})"
        )));
    }
    let models = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let len = u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]));
    let crc = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len {
        return Err(r.err(format!(
            "truncated or corrupt: the header announces {len} bytes of data, the file has {}",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Err(r.err("corrupt: checksum mismatch".into()));
    }
    if !(1..=2).contains(&models) {
        return Err(r.err(format!("corrupt: {models} models (expected 1 or 2)")));
    }
    let forward = decode_model(&mut r)?;
    let backward = if models == 2 {
        Some(decode_model(&mut r)?)
    } else {
        None
    };
    if r.pos != bytes.len() {
        return Err(r.err(format!(
            "corrupt: {} unexpected trailing bytes",
            bytes.len() - r.pos
        )));
    }
    Ok((forward, backward))
}
