//! A parallel sort that stops promptly on [`cancel`]: rayon's `par_sort_unstable` is one call
//! that cannot be interrupted (seconds on a large corpus), so the n-gram tables are sorted in
//! short tasks instead, each of which polls the flag first.
//!
//! Runs of [`RUN`] elements are sorted in parallel, then merged in rounds of doubling width.
//! Every merge is itself split into pieces of [`RUN`] output elements, found by binary search
//! (the "co-rank" of the piece's start), so each round is fully parallel down to the last.

use std::cmp::Ordering;

use rayon::prelude::*;

use crate::{cancel, memory, Result};

/// Elements per task: a run sorts, or a merge piece fills, in a few milliseconds.
const RUN: usize = 1 << 16;

/// Sorts `v` (ascending); `Err(Interrupted)` on cancellation, leaving `v` permuted.
pub(crate) fn par_sort<T: Ord + Copy + Send + Sync>(v: &mut [T]) -> Result<()> {
    par_sort_by(v, T::cmp)
}

/// [`par_sort`] by the order `cmp`.
pub(crate) fn par_sort_by<T: Copy + Send + Sync>(
    v: &mut [T],
    cmp: impl Fn(&T, &T) -> Ordering + Sync,
) -> Result<()> {
    let le = |a: &T, b: &T| cmp(a, b) != Ordering::Greater;
    v.par_chunks_mut(RUN).try_for_each(|run| {
        cancel::check()?;
        run.sort_unstable_by(&cmp);
        Ok(())
    })?;
    if v.len() <= RUN {
        return Ok(());
    }
    let mut buf = memory::filled(v.len(), v[0], "n-gram table")?;
    let mut width = RUN;
    let mut sorted_in_v = true;
    while width < v.len() {
        if sorted_in_v {
            merge_round(v, &mut buf, width, &le)?;
        } else {
            merge_round(&buf, v, width, &le)?;
        }
        sorted_in_v = !sorted_in_v;
        width *= 2;
    }
    if !sorted_in_v {
        v.copy_from_slice(&buf);
    }
    Ok(())
}

/// Merges each pair of adjacent sorted runs of `width` in `src` into `dst`.
fn merge_round<T: Copy + Send + Sync>(
    src: &[T],
    dst: &mut [T],
    width: usize,
    le: &(impl Fn(&T, &T) -> bool + Sync),
) -> Result<()> {
    dst.par_chunks_mut(2 * width)
        .zip(src.par_chunks(2 * width))
        .try_for_each(|(dst, src)| {
            let (a, b) = src.split_at(width.min(src.len()));
            dst.par_chunks_mut(RUN)
                .enumerate()
                .try_for_each(|(piece, out)| {
                    cancel::check()?;
                    let start = piece * RUN;
                    let end = start + out.len();
                    let (i, j) = (co_rank(start, a, b, le), co_rank(end, a, b, le));
                    merge(&a[i..j], &b[start - i..end - j], out, le);
                    Ok(())
                })
        })
}

/// How many of the first `k` elements of the merge of sorted `a` and `b` come from `a`
/// (ties taken from `a` first).
fn co_rank<T>(k: usize, a: &[T], b: &[T], le: impl Fn(&T, &T) -> bool) -> usize {
    let (mut lo, mut hi) = (k.saturating_sub(b.len()), k.min(a.len()));
    while lo < hi {
        let i = (lo + hi) / 2;
        // with i from `a`, b[k - i - 1] is taken; if a[i] sorts before it, take more of `a`
        if le(&a[i], &b[k - i - 1]) {
            lo = i + 1;
        } else {
            hi = i;
        }
    }
    lo
}

/// Merges sorted `a` and `b` into `out` (`a.len() + b.len()` long).
fn merge<T: Copy>(a: &[T], b: &[T], out: &mut [T], le: impl Fn(&T, &T) -> bool) {
    let (mut i, mut j) = (0, 0);
    for o in out.iter_mut() {
        if j == b.len() || (i < a.len() && le(&a[i], &b[j])) {
            *o = a[i];
            i += 1;
        } else {
            *o = b[j];
            j += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_like_the_standard_sort() {
        // lengths around the run and piece boundaries, many duplicates and distinct keys
        let mut state = 1u64;
        for len in [0, 1, RUN - 1, RUN, RUN + 1, 3 * RUN + 17, 8 * RUN] {
            for modulus in [3u64, u64::MAX] {
                let mut v: Vec<u64> = (0..len)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (state >> 11) % modulus
                    })
                    .collect();
                let mut want = v.clone();
                want.sort_unstable();
                par_sort(&mut v).unwrap();
                assert_eq!(v, want, "len {len}, modulus {modulus}");
            }
        }
    }
}
