//! Compact binary format: a forward model and optionally its backward twin.
//!
//! Layout (little-endian, every array 8-byte aligned):
//! `magic "KEXUELM\0"`, `version u32`, `models u32`, `payload_len u64`, `crc32 u32`, pad,
//! then the payload (checksummed): per model `order u64`, `vocab_len u64`, `vocab_bytes u64`,
//! one `(entries u64, slots u64)` per order ≥ 2, the vocabulary (words joined by NUL), the
//! unigram `(prob f32, backoff f32)` pairs, then per order the keys (`u32`, newest word
//! first) and the hash slots (`key u64, prob f32, backoff f32`). The hash tables are stored
//! as built, so a load reads each array straight into its final place (no parsing, no
//! hashing, no second copy of the file in memory) while the checksum runs over the bytes.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::model::{Model, ProbBackoff, Slot, Table, MAX_ORDER};
use super::vocab::Vocab;
use super::write_atomically;
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"KEXUELM\0";
pub const VERSION: u32 = 2; // 2: KenLM-style hash_extend
const HEADER: usize = 32;

/// Plain-old-data array elements: every bit pattern is a valid value, no padding, and
/// `to_le` converts to/from the file's byte order (a no-op on little-endian machines).
trait Pod: Copy + Default {
    fn to_le(self) -> Self;
}

impl Pod for u32 {
    fn to_le(self) -> Self {
        self.to_le()
    }
}

impl Pod for ProbBackoff {
    fn to_le(self) -> Self {
        ProbBackoff {
            prob: f32::from_bits(self.prob.to_bits().to_le()),
            backoff: f32::from_bits(self.backoff.to_bits().to_le()),
        }
    }
}

impl Pod for Slot {
    fn to_le(self) -> Self {
        Slot {
            key: self.key.to_le(),
            prob: f32::from_bits(self.prob.to_bits().to_le()),
            backoff: f32::from_bits(self.backoff.to_bits().to_le()),
        }
    }
}

/// The bytes of a POD slice.
fn as_bytes<T: Pod>(v: &[T]) -> &[u8] {
    // SAFETY: `T: Pod` types (u32, and the `repr(C)` ProbBackoff and Slot made of 4- and
    // 8-byte fields with no padding) have no uninitialised bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

fn as_bytes_mut<T: Pod>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: as `as_bytes`; and every bit pattern is a valid `T`, so any bytes written
    // through the view leave valid values.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), std::mem::size_of_val(v)) }
}

struct Out<W: Write> {
    w: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Out<W> {
    fn bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.w.write_all(b)?;
        self.crc.update(b);
        self.len += b.len() as u64;
        Ok(())
    }

    fn u64(&mut self, v: u64) -> std::io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    fn array<T: Pod>(&mut self, v: &[T]) -> std::io::Result<()> {
        if cfg!(target_endian = "little") {
            self.bytes(as_bytes(v))?;
        } else {
            for x in v {
                self.bytes(as_bytes(&[x.to_le()]))?;
            }
        }
        self.align()
    }

    fn align(&mut self) -> std::io::Result<()> {
        let pad = (8 - self.len % 8) % 8;
        self.bytes(&[0; 8][..pad as usize])
    }

    fn model(&mut self, m: &Model) -> std::io::Result<()> {
        let vocab: Vec<u8> = m.vocab.words().collect::<Vec<_>>().join("\0").into_bytes();
        self.u64(m.order() as u64)?;
        self.u64(m.vocab.len() as u64)?;
        self.u64(vocab.len() as u64)?;
        for t in &m.tables {
            self.u64(t.len() as u64)?;
            self.u64(t.slots.len() as u64)?;
        }
        self.bytes(&vocab)?;
        self.align()?;
        self.array(&m.unigrams)?;
        for t in &m.tables {
            self.array(&t.keys)?;
            self.array(&t.slots)?;
        }
        Ok(())
    }
}

fn header(models: u32, len: u64, crc: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&models.to_le_bytes());
    h[16..24].copy_from_slice(&len.to_le_bytes());
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Writes the payload after a placeholder header; returns the real header.
fn encode(
    w: &mut impl Write,
    forward: &Model,
    backward: Option<&Model>,
) -> std::io::Result<[u8; HEADER]> {
    w.write_all(&[0; HEADER])?;
    let mut out = Out {
        w,
        crc: crc32fast::Hasher::new(),
        len: 0,
    };
    out.model(forward)?;
    if let Some(b) = backward {
        out.model(b)?;
    }
    let models = if backward.is_some() { 2 } else { 1 };
    Ok(header(models, out.len, out.crc.finalize()))
}

/// The binary image of `forward` (and `backward`, which must share its vocabulary).
pub fn to_bytes(forward: &Model, backward: Option<&Model>) -> Vec<u8> {
    let mut bytes = Vec::new();
    let h = encode(&mut bytes, forward, backward).expect("writing to a Vec cannot fail");
    bytes[..HEADER].copy_from_slice(&h);
    bytes
}

/// Writes the binary image to `path`, streamed (temporary file, then rename).
pub fn save(path: &Path, forward: &Model, backward: Option<&Model>) -> Result<()> {
    write_atomically(path, |file| {
        let mut w = BufWriter::with_capacity(1 << 20, &mut *file);
        let h = encode(&mut w, forward, backward)?;
        w.flush()?;
        drop(w);
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&h)
    })
}

/// Reads a file written by [`save`]: the forward model and the backward one if stored.
pub fn load(path: &Path) -> Result<(Model, Option<Model>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    decode(BufReader::with_capacity(1 << 20, file), len, path)
}

/// Parses a binary image; `source` names it in errors.
pub fn from_bytes(bytes: &[u8], source: &Path) -> Result<(Model, Option<Model>)> {
    decode(bytes, bytes.len() as u64, source)
}

/// Bounds-checked reader of the payload; every failure names the source and byte offset.
struct In<'a, R: Read> {
    r: R,
    crc: crc32fast::Hasher,
    pos: u64,
    end: u64,
    source: &'a Path,
}

impl<R: Read> In<'_, R> {
    fn err(&self, message: String) -> Error {
        Error::format(self.source, 0, message)
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let n = buf.len() as u64;
        if self.end - self.pos < n {
            return Err(self.err(format!(
                "truncated or corrupt: {what} needs {n} bytes at offset {}, the data has {}",
                self.pos, self.end
            )));
        }
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.err(format!("truncated: the data ends inside {what}"))
            } else {
                Error::io(self.source, e)
            }
        })?;
        if self.pos >= HEADER as u64 {
            self.crc.update(buf);
        }
        self.pos += n;
        Ok(())
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let mut b = [0u8; 8];
        self.fill(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A count that must fit in what is left of the data (so a corrupt size cannot ask for
    /// terabytes) when each element takes `each` bytes.
    fn size(&mut self, what: &str, each: u64) -> Result<usize> {
        let v = self.u64(what)?;
        let left = self.end - self.pos;
        if v.saturating_mul(each) > left {
            return Err(self.err(format!(
                "corrupt: {what} = {v} does not fit in the {left} bytes left"
            )));
        }
        Ok(v as usize)
    }

    fn align(&mut self, what: &str) -> Result<()> {
        let pad = ((8 - self.pos % 8) % 8) as usize;
        self.fill(&mut [0u8; 8][..pad], what)
    }

    fn array<T: Pod>(&mut self, n: usize, what: &str) -> Result<Vec<T>> {
        let mut v = vec![T::default(); n];
        self.fill(as_bytes_mut(&mut v), what)?;
        if cfg!(target_endian = "big") {
            v.iter_mut().for_each(|x| *x = x.to_le());
        }
        self.align(what)?;
        Ok(v)
    }

    fn model(&mut self) -> Result<Model> {
        let order = self.u64("order")?;
        if !(1..=MAX_ORDER as u64).contains(&order) {
            return Err(self.err(format!("corrupt: order {order} is not in 1..={MAX_ORDER}")));
        }
        let order = order as usize;
        let vocab_len = self.size("vocabulary size", 8)?;
        let vocab_bytes = self.size("vocabulary bytes", 1)?;
        let mut sizes = Vec::with_capacity(order - 1);
        for n in 2..=order {
            let entries = self.size(&format!("{n}-gram count"), 4 * n as u64)?;
            let slots = self.size(&format!("{n}-gram slots"), 16)?;
            if slots <= entries {
                return Err(self.err(format!("corrupt: {n}-gram table has no empty slot")));
            }
            sizes.push((entries, slots));
        }
        let mut text = vec![0u8; vocab_bytes];
        self.fill(&mut text, "vocabulary")?;
        self.align("vocabulary")?;
        let text = std::str::from_utf8(&text)
            .map_err(|_| self.err("corrupt: the vocabulary is not UTF-8".into()))?;
        let mut vocab = Vocab::new();
        for (i, w) in text.split('\0').enumerate() {
            if vocab.insert(w) as usize != i {
                return Err(self.err(format!("corrupt: vocabulary word {i} ({w:?}) repeats")));
            }
        }
        if vocab.len() != vocab_len {
            return Err(self.err(format!(
                "corrupt: vocabulary has {} words, the header says {vocab_len}",
                vocab.len()
            )));
        }
        let unigrams = self.array(vocab_len, "unigrams")?;
        let mut tables = Vec::with_capacity(order - 1);
        for (n, &(entries, slots)) in (2..).zip(&sizes) {
            let keys: Vec<u32> = self.array(entries * n, "n-gram keys")?;
            if let Some(bad) = keys.iter().find(|&&id| id as usize >= vocab_len) {
                return Err(self.err(format!("corrupt: word id {bad} is out of the vocabulary")));
            }
            let slots = self.array(slots, "hash slots")?;
            tables.push(Table { n, keys, slots });
        }
        Ok(Model::from_marked_parts(vocab, unigrams, tables))
    }
}

fn decode(r: impl Read, len: u64, source: &Path) -> Result<(Model, Option<Model>)> {
    let mut r = In {
        r,
        crc: crc32fast::Hasher::new(),
        pos: 0,
        end: len,
        source,
    };
    let mut h = [0u8; HEADER];
    r.fill(&mut h[..8], "magic")?;
    if &h[..8] != MAGIC {
        return Err(r.err(format!(
            "not a kexue n-gram model: magic {:?}, expected {:?}",
            String::from_utf8_lossy(&h[..8]),
            String::from_utf8_lossy(MAGIC)
        )));
    }
    r.fill(&mut h[8..], "header")?;
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let version = word(8);
    if version != VERSION {
        return Err(r.err(format!(
            "format version {version} is not supported (this kexue reads version {VERSION})"
        )));
    }
    let models = word(12);
    let payload = u64::from_le_bytes(h[16..24].try_into().unwrap_or([0; 8]));
    let crc = word(24);
    if len - HEADER as u64 != payload {
        return Err(r.err(format!(
            "truncated or corrupt: the header announces {payload} bytes of data, there are {}",
            len - HEADER as u64
        )));
    }
    if !(1..=2).contains(&models) {
        return Err(r.err(format!("corrupt: {models} models (expected 1 or 2)")));
    }
    let forward = r.model()?;
    let backward = if models == 2 { Some(r.model()?) } else { None };
    if r.pos != len {
        return Err(r.err(format!(
            "corrupt: {} unexpected trailing bytes",
            len - r.pos
        )));
    }
    if r.crc.clone().finalize() != crc {
        return Err(r.err("corrupt: checksum mismatch".into()));
    }
    Ok((forward, backward))
}
