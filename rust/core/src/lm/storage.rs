//! Where a model's tables live: owned vectors while a model is assembled, then views of a
//! memory map: anonymous memory in huge pages (built or parsed models, binary files read
//! into memory) or the binary file itself, memory-mapped. A mapped file's pages sit in the
//! page cache once, so every process that maps the same file (Dask / Ray workers) shares one
//! copy of the tables instead of holding its own.

use std::fmt;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::cancel;

/// Plain-old-data array elements: every bit pattern is a valid value, no padding, and
/// `to_le` converts to/from the file's byte order (a no-op on little-endian machines).
pub(crate) trait Pod: Copy + Default {
    fn to_le(self) -> Self;
}

impl Pod for u8 {
    fn to_le(self) -> Self {
        self
    }
}

impl Pod for u32 {
    fn to_le(self) -> Self {
        self.to_le()
    }
}

impl Pod for f32 {
    fn to_le(self) -> Self {
        f32::from_bits(self.to_bits().to_le())
    }
}

/// The bytes of a POD slice.
pub(crate) fn as_bytes<T: Pod>(v: &[T]) -> &[u8] {
    // SAFETY: `T: Pod` types (u8, u32, f32, and the `repr(C)` structs of 4- and 8-byte
    // fields with no padding that implement it) have no uninitialised bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

pub(crate) fn as_bytes_mut<T: Pod>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: as `as_bytes`; and every bit pattern is a valid `T`, so any bytes written
    // through the view leave valid values.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), std::mem::size_of_val(v)) }
}

/// Transparent huge pages are 2 MiB on x86-64 and most aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// Zeroed, writable anonymous memory of at least `len` bytes, with transparent huge pages
/// requested, and the offset of its first 2 MiB-aligned byte when it is large enough to
/// hold one. Queries probe hash tables at random: with 4 KiB pages nearly every probe of a
/// large table also misses the TLB, so tables live in huge pages where the kernel allows
/// (KenLM allocates its tables the same way).
pub(crate) fn huge_zeroed(len: usize) -> std::io::Result<(MmapMut, usize)> {
    let pad = if len >= HUGE_PAGE { HUGE_PAGE } else { 0 };
    let map = MmapOptions::new().len((len + pad).max(1)).map_anon()?;
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage); // a hint: ignored where THP is off
    let offset = if pad > 0 {
        map.as_ptr().align_offset(HUGE_PAGE)
    } else {
        0
    };
    Ok((map, offset))
}

/// A read-only array of `T`: owned, or `len` elements of a memory map (a file image).
pub(crate) struct Array<T: Pod> {
    /// Where the elements are, cached beside their owner: every hash probe reads an array,
    /// and this way that costs no branch on the owner and no pointer chase through it.
    ptr: NonNull<T>,
    len: usize,
    owner: Owner<T>,
}

enum Owner<T> {
    Vec(Vec<T>),
    Map(Arc<Mmap>),
}

// SAFETY: an `Array` is a `Vec<T>` or a shared read-only map plus a pointer into it; `T: Pod`
// is plain data, so sharing or sending it across threads is as safe as for `Vec<T>`.
unsafe impl<T: Pod + Send> Send for Array<T> {}
unsafe impl<T: Pod + Sync> Sync for Array<T> {}

impl<T: Pod> Array<T> {
    /// A view of `len` elements at `offset` of `bytes`, or `None` when that range is out of
    /// bounds or misaligned for `T`.
    pub fn view(bytes: &Arc<Mmap>, offset: usize, len: usize) -> Option<Self> {
        let size = len.checked_mul(std::mem::size_of::<T>())?;
        let end = offset.checked_add(size)?;
        let data = bytes.get(offset..end)?;
        if data.as_ptr().align_offset(std::mem::align_of::<T>()) != 0 {
            return None;
        }
        Some(Array {
            ptr: NonNull::new(data.as_ptr().cast_mut().cast())?,
            len,
            owner: Owner::Map(Arc::clone(bytes)),
        })
    }

    /// Moves the elements into huge-page memory (see [`huge_zeroed`]); leaves them where they
    /// are if the system refuses the memory, or if cancellation is requested meanwhile (the
    /// copy of a large table takes a tenth of a second: it goes in pieces, polling between).
    pub fn move_to_huge_pages(&mut self) {
        const PIECE: usize = 32 << 20;
        let size = std::mem::size_of_val(&**self);
        let Ok((mut map, offset)) = huge_zeroed(size) else {
            return;
        };
        let pieces = map[offset..offset + size].chunks_mut(PIECE);
        for (to, from) in pieces.zip(as_bytes(self).chunks(PIECE)) {
            if cancel::requested() {
                return;
            }
            to.copy_from_slice(from);
        }
        if let Some(view) = map
            .make_read_only()
            .ok()
            .and_then(|map| Array::view(&Arc::new(map), offset, self.len()))
        {
            *self = view;
        }
    }

    /// The elements, for writing: a view is first copied out (copy on write).
    pub fn make_mut(&mut self) -> &mut [T] {
        if let Owner::Map(_) = self.owner {
            *self = self.to_vec().into();
        }
        match &mut self.owner {
            // The vector is never resized here, so `ptr` stays valid.
            Owner::Vec(v) => v,
            Owner::Map(_) => unreachable!("a view was just replaced by an owned copy"),
        }
    }
}

impl<T: Pod> Deref for Array<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points to `len` initialised elements owned by `owner` (a vector that
        // is never resized, or a map that `view` checked holds them, aligned); every bit
        // pattern is a valid `T: Pod`; a map is never written while viewed (files are
        // replaced by rename, never rewritten in place, and a mapped file changed by another
        // program is undefined, as for any mmap-based reader such as KenLM's).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Pod> From<Vec<T>> for Array<T> {
    fn from(mut v: Vec<T>) -> Self {
        Array {
            ptr: NonNull::new(v.as_mut_ptr()).unwrap_or(NonNull::dangling()),
            len: v.len(),
            owner: Owner::Vec(v),
        }
    }
}

impl<T: Pod> Clone for Array<T> {
    fn clone(&self) -> Self {
        match &self.owner {
            Owner::Vec(v) => v.clone().into(),
            Owner::Map(map) => Array {
                ptr: self.ptr,
                len: self.len,
                owner: Owner::Map(Arc::clone(map)),
            },
        }
    }
}

impl<T: Pod + PartialEq> PartialEq for Array<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Pod> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.owner {
            Owner::Vec(_) => "owned",
            Owner::Map(_) => "view",
        };
        write!(f, "Array({} elements, {kind})", self.len())
    }
}
