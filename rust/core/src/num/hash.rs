//! Hashing helpers of the n-gram tables.

/// MurmurHash3's 64-bit finaliser: every input bit affects every output bit.
#[inline]
pub fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Bit `i` set where `group[i] == byte`.
#[inline]
pub fn eq_mask16(group: &[u8; 16], byte: u8) -> u32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of x86-64; the load reads exactly the 16 bytes of `group`.
    unsafe {
        use std::arch::x86_64::*;
        let g = _mm_loadu_si128(group.as_ptr().cast());
        _mm_movemask_epi8(_mm_cmpeq_epi8(g, _mm_set1_epi8(byte as i8))) as u32
    }
    #[cfg(not(target_arch = "x86_64"))]
    (0..16).fold(0, |m, i| m | u32::from(group[i] == byte) << i)
}
