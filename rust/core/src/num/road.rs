//! The SIMD road: which instruction set the kernels run on, chosen once per process.
//!
//! Every kernel with per-ISA code is written once and compiled once per road by
//! [`per_road!`]; each call runs the clone of the road [`road`] names. The road is the
//! widest the CPU has, unless the environment variable `KEXUE_SIMD` names a narrower one
//! (as numpy's `NPY_DISABLE_CPU_FEATURES`): that is how the tests run every road on one
//! machine. `multiversion`'s own dispatcher cannot be used for this, since it asks the CPU
//! directly on every first call; its `target` attribute still compiles each clone.
//! Results depend on the road only through lane widths and fused multiply-adds, so a road
//! gives the same bits on every run and thread count.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::{Error, Result};

/// The environment variable that overrides the road.
pub const VAR: &str = "KEXUE_SIMD";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Road {
    /// x86-64 with AVX-512 F/VL/DQ, AVX2 and FMA.
    Avx512,
    /// x86-64 with AVX2 and FMA.
    Avx2,
    /// aarch64 with NEON.
    Neon,
    /// The architecture's baseline (SSE2 on x86-64), no fused multiply-add.
    Portable,
}

impl Road {
    pub const ALL: [Road; 4] = [Road::Avx512, Road::Avx2, Road::Neon, Road::Portable];

    pub fn name(self) -> &'static str {
        match self {
            Road::Avx512 => "avx512",
            Road::Avx2 => "avx2",
            Road::Neon => "neon",
            Road::Portable => "portable",
        }
    }

    /// Whether this CPU can run the road.
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Road::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && Road::Avx2.supported()
            }
            #[cfg(target_arch = "x86_64")]
            Road::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "aarch64")]
            Road::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            Road::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The roads this CPU runs, widest first (`portable` last).
    pub fn available() -> Vec<Road> {
        Road::ALL.into_iter().filter(|r| r.supported()).collect()
    }

    /// The road `KEXUE_SIMD`'s value `value` names, or the widest one when unset (`None`).
    pub fn select(value: Option<&str>) -> Result<Road> {
        let available = Road::available();
        let Some(value) = value else {
            return Ok(available[0]);
        };
        let names = available
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(", ");
        match Road::ALL.into_iter().find(|r| r.name() == value) {
            Some(r) if r.supported() => Ok(r),
            Some(_) => Err(Error::value(
                VAR,
                format!("names the road {value:?}, which this CPU lacks; it has: {names}"),
            )),
            None => Err(Error::value(
                VAR,
                format!("must be one of this CPU's roads ({names}) or unset, got {value:?}"),
            )),
        }
    }
}

/// The road from `KEXUE_SIMD` (read once), or why its value is refused.
pub fn try_road() -> Result<Road> {
    static CHOICE: OnceLock<std::result::Result<Road, String>> = OnceLock::new();
    let choice = CHOICE.get_or_init(|| {
        let value = std::env::var(VAR).ok();
        Road::select(value.as_deref().filter(|v| !v.is_empty())).map_err(|e| match e {
            Error::Value { expected, .. } => expected,
            other => other.to_string(),
        })
    });
    choice.clone().map_err(|message| Error::value(VAR, message))
}

/// The road the kernels run on. The bindings check [`try_road`] at import, so from Python a
/// bad `KEXUE_SIMD` never gets here; elsewhere it panics with the same message.
#[inline]
pub fn road() -> Road {
    // 0: not yet read; else 1 + the index in `Road::ALL`. A relaxed load per kernel call.
    static CACHED: AtomicU8 = AtomicU8::new(0);
    match CACHED.load(Ordering::Relaxed) {
        0 => {
            let r = try_road().unwrap_or_else(|e| panic!("{e}"));
            let index = Road::ALL.iter().position(|&x| x == r).unwrap_or(3);
            CACHED.store(index as u8 + 1, Ordering::Relaxed);
            r
        }
        i => Road::ALL[usize::from(i - 1)],
    }
}

/// Compiles a function once per road (AVX-512, AVX2 + FMA or NEON, and the baseline) and
/// makes each call run the clone of [`road`]'s road. Arguments are identifiers or
/// parenthesised tuple patterns; generics go in square brackets after the name
/// (`fn f[T: Float](x: &[T])`); `where road: r` after the signature names the clone's road
/// `r` in the body (a constant there, so a `match` on it folds away). Helpers the body calls
/// should be `#[inline(always)]`, so they are compiled for the clone's features too.
#[macro_export]
macro_rules! per_road {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $([$($gen:tt)*])? ($($arg:tt: $ty:ty),* $(,)?) $(-> $ret:ty)?
        where road: $road:ident $body:block
    ) => {
        $crate::per_road! {
            @road $road; $(#[$meta])* $vis fn $name $([$($gen)*])? ($($arg: $ty),*) $(-> $ret)?
            $body
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $([$($gen:tt)*])? ($($arg:tt: $ty:ty),* $(,)?) $(-> $ret:ty)?
        $body:block
    ) => {
        $crate::per_road! {
            @road _; $(#[$meta])* $vis fn $name $([$($gen)*])? ($($arg: $ty),*) $(-> $ret)?
            $body
        }
    };
    (
        @road $road:tt; $(#[$meta:meta])*
        $vis:vis fn $name:ident $([$($gen:tt)*])? ($($arg:tt: $ty:ty),*) $(-> $ret:ty)?
        $body:block
    ) => {
        $(#[$meta])*
        // The metavariables in the unsafe calls below are this function's own parameter
        // names (identifiers, or tuple patterns read back as tuples): no caller code.
        #[allow(clippy::macro_metavars_in_unsafe)]
        $vis fn $name $(<$($gen)*>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp $(<$($gen)*>)? ($road: $crate::num::Road, $($arg: $ty),*) $(-> $ret)? $body
            #[multiversion::target("x86_64+avx512f+avx512vl+avx512dq+avx2+fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512 $(<$($gen)*>)? ($($arg: $ty),*) $(-> $ret)? {
                imp($crate::num::Road::Avx512, $($arg),*)
            }
            #[multiversion::target("x86_64+avx2+fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2 $(<$($gen)*>)? ($($arg: $ty),*) $(-> $ret)? {
                imp($crate::num::Road::Avx2, $($arg),*)
            }
            #[multiversion::target("aarch64+neon")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn neon $(<$($gen)*>)? ($($arg: $ty),*) $(-> $ret)? {
                imp($crate::num::Road::Neon, $($arg),*)
            }
            match $crate::num::road() {
                // SAFETY: `road` names only roads the CPU supports.
                #[cfg(target_arch = "x86_64")]
                $crate::num::Road::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                $crate::num::Road::Avx2 => unsafe { avx2($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "aarch64")]
                $crate::num::Road::Neon => unsafe { neon($($arg),*) },
                _ => imp($crate::num::Road::Portable, $($arg),*),
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_override_names_the_variable_and_the_cpus_roads() {
        let available = Road::available();
        assert_eq!(available.last(), Some(&Road::Portable));
        assert_eq!(Road::select(None).unwrap(), available[0]);
        for r in &available {
            assert_eq!(Road::select(Some(r.name())).unwrap(), *r);
        }
        let e = Road::select(Some("sse9")).unwrap_err().to_string();
        assert!(
            e.contains("KEXUE_SIMD") && e.contains("portable") && e.contains("sse9"),
            "{e}"
        );
        if let Some(r) = Road::ALL.into_iter().find(|r| !r.supported()) {
            let e = Road::select(Some(r.name())).unwrap_err().to_string();
            assert!(e.contains("lacks") && e.contains(r.name()), "{e}");
        }
        assert!(available.contains(&road()));
    }
}
