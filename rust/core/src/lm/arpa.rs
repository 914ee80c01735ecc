//! ARPA text format (KenLM/SRILM): log10 probabilities and back-off weights.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use super::files::{open_regular, write_atomically};
use super::model::{key_hash, sorted, Model, ProbBackoff, Table, MAX_ORDER};
use super::vocab::{is_separator, Vocab, BOS, EOS, UNK};
use crate::{memory, Error, Result};

/// Writes `model` as ARPA (temporary file, then rename). Numbers are printed with the
/// shortest representation that reads back to the same `f32`, so a round trip is exact.
pub fn write_arpa(model: &Model, path: &Path) -> Result<()> {
    write_atomically(path, |file| {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write_to(model, &mut w)?;
        w.flush()
    })
}

fn write_to(model: &Model, w: &mut impl Write) -> std::io::Result<()> {
    let order = model.order();
    let vocab = model.vocab();
    writeln!(w, "\\data\\")?;
    for (n, c) in model.counts().iter().enumerate() {
        writeln!(w, "ngram {}={c}", n + 1)?;
    }
    let word = |id: u32| vocab.word(id).unwrap_or("<unk>");
    write!(w, "\n\\1-grams:\n")?;
    for (id, pb) in (0..).zip(model.unigrams()) {
        write!(w, "{}\t{}", pb.prob, word(id))?;
        if order > 1 {
            write!(w, "\t{}", pb.backoff + 0.0)?; // -0.0 (a mark) prints as 0
        }
        writeln!(w)?;
    }
    for n in 2..=order {
        write!(w, "\n\\{n}-grams:\n")?;
        for (key, pb) in model.entries(n) {
            write!(w, "{}\t{}", pb.prob, word(key[n - 1]))?;
            for &id in key[..n - 1].iter().rev() {
                write!(w, " {}", word(id))?;
            }
            if n < order {
                write!(w, "\t{}", pb.backoff + 0.0)?; // -0.0 (a mark) prints as 0
            }
            writeln!(w)?;
        }
    }
    writeln!(w, "\n\\end\\")
}

/// Reads lines as bytes so that bad UTF-8 is reported with its line number.
struct Lines<'a> {
    path: &'a Path,
    reader: BufReader<File>,
    buf: Vec<u8>,
    line: usize,
}

impl<'a> Lines<'a> {
    /// The next line without its end, or `None` at the end of the file.
    fn next(&mut self) -> Result<Option<&str>> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| Error::io(self.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        let text = std::str::from_utf8(&self.buf).map_err(|e| {
            self.err(format!(
                "invalid UTF-8 at byte {} of the line",
                e.valid_up_to()
            ))
        })?;
        Ok(Some(text.trim_end_matches(['\n', '\r'])))
    }

    /// The next line that is not blank; the end of the file is an error naming `wanted`.
    fn next_nonblank(&mut self, wanted: &str) -> Result<String> {
        loop {
            match self.next()? {
                None => {}
                Some(l) if l.trim().is_empty() => continue,
                Some(l) => return Ok(l.to_string()),
            }
            return Err(self.err(format!("file ends where {wanted} was expected")));
        }
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::format(self.path, self.line, message)
    }
}

/// A log10 probability: at most 0 (a probability of at most 1); `-inf` (probability 0) is
/// allowed, as `<s>` sometimes has it. KenLM refuses positive ones too.
fn parse_prob(field: &str, lines: &Lines) -> Result<f32> {
    match field.parse::<f32>() {
        Ok(v) if v <= 0.0 => Ok(v),
        Ok(v) if v > 0.0 => Err(lines.err(format!(
            "log10 probability {field} is positive (a probability above 1)"
        ))),
        _ => Err(lines.err(format!("probability {field:?} is not a number"))),
    }
}

/// A log10 back-off weight: finite and at most 0 (interpolated Kneser–Ney back-offs are at
/// most 1; a larger one gives distributions that sum to more than 1).
fn parse_backoff(field: &str, lines: &Lines) -> Result<f32> {
    match field.parse::<f32>() {
        Ok(v) if v.is_finite() && v <= 0.0 => Ok(v),
        Ok(v) if v.is_finite() => Err(lines.err(format!(
            "log10 back-off {field} is positive (a back-off weight above 1)"
        ))),
        Ok(_) => Err(lines.err(format!("back-off {field:?} is not finite"))),
        _ => Err(lines.err(format!("back-off {field:?} is not a number"))),
    }
}

/// Reads an ARPA file (as written by lmplz, SRILM or [`write_arpa`]). Words of higher-order
/// n-grams must be unigrams; a missing `<unk>` gets log10 p = -100 (as KenLM does).
pub fn read_arpa(path: &Path) -> Result<Model> {
    let file = open_regular(path)?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut lines = Lines {
        path,
        reader: BufReader::with_capacity(1 << 20, file),
        buf: Vec::new(),
        line: 0,
    };
    let first = lines.next_nonblank("\\data\\")?;
    if first.trim() != "\\data\\" {
        return Err(lines.err(format!(
            "expected \\data\\ (an ARPA header), got {:?}",
            truncate(&first)
        )));
    }
    let mut counts: Vec<usize> = Vec::new();
    loop {
        let line = lines.next_nonblank("\\1-grams:")?.trim().to_string();
        if let Some(rest) = line.strip_prefix("ngram ") {
            let parsed = rest.split_once('=').and_then(|(n, c)| {
                Some((
                    n.trim().parse::<usize>().ok()?,
                    c.trim().parse::<usize>().ok()?,
                ))
            });
            match parsed {
                Some((n, c)) if n == counts.len() + 1 && n <= MAX_ORDER => {
                    // Each n-gram line holds at least a digit and n one-byte words, spaced,
                    // and a newline: a count the file cannot hold is refused before
                    // anything is allocated for it.
                    let least = (2 * n as u128 + 2) * c as u128;
                    if least > u128::from(file_len) {
                        return Err(lines.err(format!(
                            "ngram {n}={c} cannot be right: {c} {n}-gram lines take at least \
                             {least} bytes, the file has {file_len}"
                        )));
                    }
                    counts.push(c)
                }
                _ => {
                    return Err(lines.err(format!(
                        "expected \"ngram {}=COUNT\" (orders 1 to {MAX_ORDER}), got {line:?}",
                        counts.len() + 1
                    )))
                }
            }
        } else if line == "\\1-grams:" && !counts.is_empty() {
            break;
        } else {
            return Err(lines.err(format!(
                "expected an \"ngram N=COUNT\" line or \\1-grams:, got {:?}",
                truncate(&line)
            )));
        }
    }
    let order = counts.len();
    let mut vocab = Vocab::new();
    let missing = ProbBackoff {
        prob: f32::NAN,
        backoff: 0.0,
    };
    let mut unigrams = vec![missing; 3];
    let mut orders: Vec<(Vec<u32>, Vec<ProbBackoff>)> = Vec::with_capacity(order - 1);
    for n in 1..=order {
        if n > 1 {
            let header = format!("\\{n}-grams:");
            let line = lines.next_nonblank(&header)?;
            if line.trim() != header {
                return Err(lines.err(format!(
                    "expected {header} after {} {}-grams, got {:?} (is the header's count right?)",
                    counts[n - 2],
                    n - 1,
                    truncate(&line)
                )));
            }
        }
        let what = format!("{n}-grams");
        let mut keys: Vec<u32> =
            memory::with_capacity(if n > 1 { counts[n - 1] * n } else { 0 }, &what)?;
        let mut weights: Vec<ProbBackoff> = memory::with_capacity(counts[n - 1], &what)?;
        for _ in 0..counts[n - 1] {
            let line = lines.next_nonblank(&format!("a {n}-gram"))?;
            // Fields are separated by spaces and tabs, as KenLM reads them (lmplz keeps
            // other whitespace, such as U+00A0, inside words).
            let fields: Vec<&str> = line.split([' ', '\t']).filter(|f| !f.is_empty()).collect();
            if fields.len() != n + 1 && fields.len() != n + 2 {
                return Err(lines.err(format!(
                    "expected a {n}-gram line (log10 prob, {n} words, optional back-off), \
                     got {} fields in {:?} (is the header's count right?)",
                    fields.len(),
                    truncate(&line)
                )));
            }
            let prob = parse_prob(fields[0], &lines)?;
            let backoff = match fields.get(n + 1) {
                Some(f) => parse_backoff(f, &lines)?,
                None => 0.0,
            };
            let pb = ProbBackoff { prob, backoff };
            if n == 1 {
                if fields[1].chars().any(is_separator) {
                    return Err(lines.err(format!(
                        "word {:?} holds whitespace or NUL, where kexue splits words: \
                         no query could reach it",
                        fields[1]
                    )));
                }
                let before = vocab.len();
                let id = vocab.insert(fields[1]) as usize;
                if id < before && !unigrams[id].prob.is_nan() {
                    return Err(lines.err(format!("unigram {:?} appears twice", fields[1])));
                }
                if id == unigrams.len() {
                    unigrams.push(pb);
                } else {
                    unigrams[id] = pb;
                }
            } else {
                let start = keys.len();
                for w in fields[1..=n].iter().rev() {
                    let Some(id) = vocab.get(w) else {
                        return Err(lines.err(format!("word {w:?} is not among the unigrams")));
                    };
                    keys.push(id);
                }
                if keys[start + 1..].contains(&EOS) || keys[start..start + n - 1].contains(&BOS) {
                    return Err(lines.err("</s> may only end and <s> only start an n-gram"));
                }
                weights.push(pb);
            }
        }
        if n == 1 {
            for (id, name) in [(BOS, "<s>"), (EOS, "</s>")] {
                if unigrams[id as usize].prob.is_nan() {
                    return Err(lines.err(format!("the unigrams lack {name}")));
                }
            }
            if unigrams[UNK as usize].prob.is_nan() {
                unigrams[UNK as usize] = ProbBackoff {
                    prob: -100.0,
                    backoff: 0.0,
                };
            }
        } else {
            let (keys, weights) = sorted(n, keys, weights)?;
            if let Some(i) =
                (1..weights.len()).find(|&i| keys[(i - 1) * n..i * n] == keys[i * n..(i + 1) * n])
            {
                let words: Vec<&str> = keys[i * n..(i + 1) * n]
                    .iter()
                    .rev()
                    .map(|&id| vocab.word(id).unwrap_or("?"))
                    .collect();
                return Err(lines.err(format!("{n}-gram {:?} appears twice", words.join(" "))));
            }
            orders.push((keys, weights));
        }
    }
    let end = lines.next_nonblank("\\end\\")?;
    if end.trim() != "\\end\\" {
        return Err(lines.err(format!(
            "expected \\end\\ after {} {order}-grams, got {:?} (is the header's count right?)",
            counts[order - 1],
            truncate(&end)
        )));
    }
    fill_lower_orders(&mut orders)?;
    let mut tables: Vec<Table> = Vec::with_capacity(order - 1);
    for (i, (keys, mut weights)) in orders.into_iter().enumerate() {
        let n = i + 2;
        for (key, w) in keys.chunks_exact(n).zip(weights.iter_mut()) {
            if w.prob.is_nan() {
                w.prob = backed_off_prob(&unigrams, &tables, key);
            }
        }
        tables.push(Table::from_sorted(n, keys, weights)?);
    }
    Model::new(vocab, unigrams, tables)
}

/// Whether `probe` (newest word first) is among `keys`, `n`-grams in [`sorted`] order.
fn holds(keys: &[u32], n: usize, probe: &[u32]) -> bool {
    let len = keys.len() / n;
    let key = |i: usize| &keys[i * n..(i + 1) * n];
    let target = (&probe[1..], probe[0]);
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match (&key(mid)[1..], key(mid)[0]).cmp(&target) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

/// Adds the (n − 1)-grams that n-grams need, as KenLM does for SRILM's pruned files: the
/// suffix (last n − 1 words), through which scoring finds an n-gram, and the context (first
/// n − 1 words), which the state must hold to extend to it. Added entries carry a NaN
/// probability (what backing off gives, filled in once the lower orders are tables) and
/// back-off 0. From the top order down, so that added entries' own needs are added too.
fn fill_lower_orders(orders: &mut [(Vec<u32>, Vec<ProbBackoff>)]) -> Result<()> {
    for n in (3..=orders.len() + 1).rev() {
        let (lower, upper) = orders.split_at_mut(n - 2);
        let (low_keys, low_weights) = &mut lower[n - 3];
        // newest word first: the suffix is the key's first n − 1 ids, the context its last
        let mut missing: Vec<&[u32]> = upper[0]
            .0
            .chunks_exact(n)
            .flat_map(|k| [&k[..n - 1], &k[1..]])
            .filter(|s| !holds(low_keys, n - 1, s))
            .collect();
        if missing.is_empty() {
            continue;
        }
        missing.sort_unstable();
        missing.dedup();
        let mut keys = std::mem::take(low_keys);
        let mut weights = std::mem::take(low_weights);
        for s in missing {
            keys.extend_from_slice(s);
            weights.push(ProbBackoff {
                prob: f32::NAN,
                backoff: 0.0,
            });
        }
        (lower[n - 3].0, lower[n - 3].1) = sorted(n - 1, keys, weights)?;
    }
    Ok(())
}

/// log10 p of the absent n-gram `key` (newest word first) by backing off through `tables`
/// (orders 2 and up, all below `key`'s): the context's back-off, then the suffix's
/// probability or, where the suffix is absent too, its own back-off in turn.
fn backed_off_prob(unigrams: &[ProbBackoff], tables: &[Table], key: &[u32]) -> f32 {
    let backoff = |ctx: &[u32]| match ctx.len() {
        1 => unigrams[ctx[0] as usize].backoff,
        m => tables[m - 2].find(key_hash(ctx)).map_or(0.0, |s| s.backoff),
    };
    let mut total = 0.0;
    let mut r = key;
    loop {
        total += backoff(&r[1..]);
        r = &r[..r.len() - 1];
        if r.len() == 1 {
            return total + unigrams[r[0] as usize].prob;
        }
        if let Some(slot) = tables[r.len() - 2].find(key_hash(r)) {
            return total + slot.prob;
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}
