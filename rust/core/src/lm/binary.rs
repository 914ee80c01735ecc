//! Compact binary format: a forward model and optionally its backward twin.
//!
//! Layout (little-endian, every array 8-byte aligned):
//! `magic "KEXUELM\0"`, `version u32`, `models u32`, `payload_len u64`, `crc32 u32`, pad,
//! then the payload (checksummed): per model `order u64`, `vocab_len u64`, `vocab_bytes u64`,
//! one `(entries u64, slots u64)` per order ≥ 2, the vocabulary (words joined by NUL), the
//! unigram `(prob f32, backoff f32)` pairs, then per order the keys (`u32`, newest word
//! first, sorted by context then word), their log10 probabilities (`f32`, same order) and the
//! hash slots (`key u64, prob f32, backoff f32`) with their one-byte tags (`slots + 16`
//! bytes). The hash tables are stored
//! as built, so a loaded model uses each array where it lies in the file image (read into one
//! aligned buffer, or memory-mapped and shared between processes): no parsing, no hashing,
//! no second copy.

use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};

use super::files::{open_regular, write_atomically};
use super::model::{MappedFile, Model, Table, MAX_ORDER, TAG_GROUP};
use super::storage::{as_bytes, as_bytes_mut, huge_zeroed, Array, Pod};
use super::vocab::Vocab;
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"KEXUELM\0";
// 2: KenLM-style hash_extend; 3: keys by context, probs array; 4: slot tags.
pub const VERSION: u32 = 4;
const HEADER: usize = 32;

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
            self.array(&t.probs)?;
            self.array(&t.slots)?;
            self.array(&t.tags)?;
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
/// With `mapped` the file is memory-mapped and the tables are views of the map, so processes
/// loading the same file share its pages; otherwise it is read into private memory (in huge
/// pages where the system allows: faster queries, no sharing).
pub fn load(path: &Path, mapped: bool) -> Result<(Model, Option<Model>)> {
    let file = open_regular(path)?;
    if mapped && cfg!(target_endian = "little") {
        // SAFETY: the map is read-only and kexue never rewrites a file in place (saves go
        // through a temporary file and a rename). Another program truncating or rewriting a
        // mapped file would fault the next read of a vanished page (SIGBUS); every query
        // first checks the file's size and modification time (`Model::check_file`) and
        // refuses a changed file instead.
        let map = unsafe { MmapOptions::new().populate().map(&file) };
        let map = map.map_err(|e| Error::io(path, e))?;
        let len = map.len();
        let (mut forward, mut backward) = decode(&Arc::new(map), 0..len, path)?;
        let mapped = MappedFile::new(file, path)?;
        forward.mapped = mapped.clone();
        if let Some(b) = &mut backward {
            b.mapped = mapped;
        }
        return Ok((forward, backward));
    }
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let len = usize::try_from(len).map_err(|_| Error::format(path, 0, "is too large to read"))?;
    let (mut map, start) = huge_zeroed(len).map_err(|e| Error::io(path, e))?;
    (&file)
        .read_exact(&mut map[start..start + len])
        .map_err(|e| Error::io(path, e))?;
    let map = map.make_read_only().map_err(|e| Error::io(path, e))?;
    decode(&Arc::new(map), start..start + len, path)
}

/// Parses a binary image (copied into huge-page memory); `source` names it in errors.
pub fn from_bytes(bytes: &[u8], source: &Path) -> Result<(Model, Option<Model>)> {
    let (mut map, start) = huge_zeroed(bytes.len()).map_err(|e| Error::io(source, e))?;
    let image = start..start + bytes.len();
    map[image.clone()].copy_from_slice(bytes);
    let map = map.make_read_only().map_err(|e| Error::io(source, e))?;
    decode(&Arc::new(map), image, source)
}

/// Bounds-checked reader of a file image; every failure names the source.
struct In<'a> {
    map: &'a Arc<Mmap>,
    /// Where the image starts in the map (a multiple of 8, so alignment within the image is
    /// alignment in memory).
    base: usize,
    /// The image.
    data: &'a [u8],
    pos: usize,
    source: &'a Path,
}

impl<'a> In<'a> {
    fn err(&self, message: String) -> Error {
        Error::format(self.source, 0, message)
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let data = self.data;
        let Some(out) = self
            .pos
            .checked_add(n)
            .and_then(|end| data.get(self.pos..end))
        else {
            return Err(self.err(format!(
                "truncated or corrupt: {what} needs {n} bytes at offset {}, the data has {}",
                self.pos,
                data.len()
            )));
        };
        self.pos += n;
        Ok(out)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    /// A count that must fit in what is left of the data (so a corrupt size cannot ask for
    /// terabytes) when each element takes `each` bytes.
    fn size(&mut self, what: &str, each: u64) -> Result<usize> {
        let v = self.u64(what)?;
        let left = (self.data.len() - self.pos) as u64;
        if v.saturating_mul(each) > left {
            return Err(self.err(format!(
                "corrupt: {what} = {v} does not fit in the {left} bytes left"
            )));
        }
        Ok(v as usize)
    }

    fn align(&mut self, what: &str) -> Result<()> {
        let pad = (8 - self.pos % 8) % 8;
        self.take(pad, what).map(drop)
    }

    /// `n` elements in place (a view of the image), converted to an owned copy only on
    /// big-endian machines.
    fn array<T: Pod>(&mut self, n: usize, what: &str) -> Result<Array<T>> {
        let offset = self.pos;
        let size = n.saturating_mul(std::mem::size_of::<T>());
        let data = self.take(size, what)?;
        let array = if cfg!(target_endian = "little") {
            Array::view(self.map, self.base + offset, n).ok_or_else(|| {
                self.err(format!("corrupt: {what} at offset {offset} is misaligned"))
            })?
        } else {
            let mut v = vec![T::default(); n];
            as_bytes_mut(&mut v).copy_from_slice(data);
            v.iter_mut().for_each(|x| *x = x.to_le());
            v.into()
        };
        self.align(what)?;
        Ok(array)
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
            let entries = self.size(&format!("{n}-gram count"), 4 * (n as u64 + 1))?;
            let slots = self.size(&format!("{n}-gram slots"), 16)?;
            if slots <= entries || slots < TAG_GROUP {
                return Err(self.err(format!(
                    "corrupt: {n}-gram table has {slots} slots for {entries} entries"
                )));
            }
            sizes.push((entries, slots));
        }
        let text = self.take(vocab_bytes, "vocabulary")?;
        let text = std::str::from_utf8(text)
            .map_err(|_| self.err("corrupt: the vocabulary is not UTF-8".into()))?;
        let mut vocab = Vocab::new();
        for (i, w) in text.split('\0').enumerate() {
            if vocab.insert(w) as usize != i {
                return Err(self.err(format!("corrupt: vocabulary word {i} ({w:?}) repeats")));
            }
        }
        self.align("vocabulary")?;
        if vocab.len() != vocab_len {
            return Err(self.err(format!(
                "corrupt: vocabulary has {} words, the header says {vocab_len}",
                vocab.len()
            )));
        }
        let unigrams = self.array(vocab_len, "unigrams")?;
        let mut tables = Vec::with_capacity(order - 1);
        for (n, &(entries, slots)) in (2..).zip(&sizes) {
            let keys: Array<u32> = self.array(entries * n, "n-gram keys")?;
            if let Some(bad) = keys.iter().find(|&&id| id as usize >= vocab_len) {
                return Err(self.err(format!("corrupt: word id {bad} is out of the vocabulary")));
            }
            let probs = self.array(entries, "n-gram probabilities")?;
            let slots = self.array(slots, "hash slots")?;
            let tags: Array<u8> = self.array(slots.len() + TAG_GROUP, "slot tags")?;
            // Searches stop at an empty tag and read the first group again past the end.
            let (table, wrapped) = tags.split_at(slots.len());
            if !table.contains(&0) || wrapped != &table[..TAG_GROUP] {
                return Err(self.err(format!("corrupt: {n}-gram slot tags")));
            }
            tables.push(Table {
                n,
                keys,
                probs,
                slots,
                tags,
            });
        }
        Ok(Model::from_marked_parts(vocab, unigrams, tables))
    }
}

/// Parses the image at `image` of `map`.
fn decode(map: &Arc<Mmap>, image: Range<usize>, source: &Path) -> Result<(Model, Option<Model>)> {
    let mut r = In {
        map,
        base: image.start,
        data: &map[image],
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
    let h = r.take(HEADER - 8, "header")?;
    let word = |i: usize| u32::from_le_bytes([h[i - 8], h[i - 7], h[i - 6], h[i - 5]]);
    let (version, models, crc) = (word(8), word(12), word(24));
    let payload = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
    if version != VERSION {
        return Err(r.err(format!(
            "format version {version} is not supported (this kexue reads version {VERSION})"
        )));
    }
    let data = &r.data[HEADER..];
    if data.len() as u64 != payload {
        return Err(r.err(format!(
            "truncated or corrupt: the header announces {payload} bytes of data, there are {}",
            data.len()
        )));
    }
    if !(1..=2).contains(&models) {
        return Err(r.err(format!("corrupt: {models} models (expected 1 or 2)")));
    }
    if crc32fast::hash(data) != crc {
        return Err(r.err("corrupt: checksum mismatch".into()));
    }
    let forward = r.model()?;
    let backward = if models == 2 { Some(r.model()?) } else { None };
    let left = r.data.len() - r.pos;
    if left != 0 {
        return Err(r.err(format!("corrupt: {left} unexpected trailing bytes")));
    }
    Ok((forward, backward))
}
