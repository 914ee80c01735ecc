//! The one conversion layer of the bindings: arguments (arrays by dtype, shape and
//! contiguity; integers by range), outputs (float arrays only), and running a kernel with the
//! GIL released in the kexue pool. Every message names the argument.

use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use kexue_core::{cancel, memory, parallel};
use numpy::npyffi::{npy_intp, NpyTypes, PY_ARRAY_API};
use numpy::{
    Element, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn,
    PyReadwriteArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyMemoryError, PyOverflowError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString};

use crate::errors::{panic_to_py, Error, Result};

/// What an argument's shape must be.
#[derive(Clone, Copy)]
pub enum Shape<'a> {
    Any,
    Ndim(usize),
    Exact(&'a [usize]),
}

/// The dtype an array argument must have, for messages.
#[derive(Clone, Copy)]
pub enum Dtype<'a> {
    /// The array's own element type.
    Own,
    /// The dtype of the argument named here (the element type is that argument's).
    Of(&'a str),
}

/// `obj` as an array of element type `T`, `shape` and C order; a `TypeError` (wrong type or
/// dtype) or `ValueError` (shape, layout) naming `name` otherwise. The one array check of
/// the bindings: [`array`] and [`array_mut`] borrow what it returns.
pub fn checked<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    dtype: Dtype<'_>,
    shape: Shape<'_>,
) -> Result<Bound<'py, PyArrayDyn<T>>> {
    let Ok(a) = obj.downcast::<PyArrayDyn<T>>() else {
        let want = T::get_dtype(obj.py());
        let of = match dtype {
            Dtype::Own => String::new(),
            Dtype::Of(like) => format!(" (the dtype of {like})"),
        };
        return Err(Error::type_(
            name,
            format!("must be a {want} numpy array{of}, got {}", describe(obj)?),
        ));
    };
    let got = a.shape();
    match shape {
        Shape::Ndim(n) if got.len() != n => {
            return Err(Error::value(
                name,
                format!("must have {n} dimensions, got shape {got:?}"),
            ))
        }
        Shape::Exact(want) if got != want => {
            return Err(Error::value(
                name,
                format!("must have shape {want:?}, got {got:?}"),
            ))
        }
        _ => {}
    }
    if !a.is_c_contiguous() {
        return Err(not_contiguous(name));
    }
    Ok(a.clone())
}

fn not_contiguous(name: &str) -> Error {
    Error::value(name, "must be a C-contiguous array")
}

/// "dtype float64" for an array, else the Python type's name.
fn describe(obj: &Bound<'_, PyAny>) -> Result<String> {
    Ok(match obj.getattr("dtype") {
        Ok(dtype) => format!("dtype {dtype}"),
        Err(_) => obj.get_type().name()?.to_string(),
    })
}

/// A read-only argument array (see [`checked`]).
pub fn array<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    dtype: Dtype<'_>,
    shape: Shape<'_>,
) -> Result<PyReadonlyArrayDyn<'py, T>> {
    Ok(checked::<T>(obj, name, dtype, shape)?.try_readonly()?)
}

/// A writable argument array, updated in place (see [`checked`]).
pub fn array_mut<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    dtype: Dtype<'_>,
    shape: Shape<'_>,
) -> Result<PyReadwriteArrayDyn<'py, T>> {
    Ok(checked::<T>(obj, name, dtype, shape)?.try_readwrite()?)
}

/// [`array`] of an argument that may be absent or None.
pub fn optional<'py, T: Element>(
    obj: Option<&Bound<'py, PyAny>>,
    name: &str,
    dtype: Dtype<'_>,
    shape: Shape<'_>,
) -> Result<Option<PyReadonlyArrayDyn<'py, T>>> {
    obj.filter(|o| !o.is_none())
        .map(|o| array(o, name, dtype, shape))
        .transpose()
}

/// A read-only float32 or float64 numpy array (the dtype picks the kernel's float type).
pub enum FloatArray<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
}

impl<'py> FloatArray<'py> {
    pub fn extract(obj: &Bound<'py, PyAny>, name: &str) -> Result<Self> {
        if obj.downcast::<PyArrayDyn<f32>>().is_ok() {
            return Ok(FloatArray::F32(array(obj, name, Dtype::Own, Shape::Any)?));
        }
        if obj.downcast::<PyArrayDyn<f64>>().is_ok() {
            return Ok(FloatArray::F64(array(obj, name, Dtype::Own, Shape::Any)?));
        }
        Err(Error::type_(
            name,
            format!(
                "must be a float32 or float64 numpy array, got {}",
                describe(obj)?
            ),
        ))
    }
}

/// Expands `$body` once per dtype with `$a` bound to the typed array.
macro_rules! with_float_array {
    ($array:expr, $a:ident => $body:expr) => {
        match $array {
            $crate::arrays::FloatArray::F32($a) => $body,
            $crate::arrays::FloatArray::F64($a) => $body,
        }
    };
}
pub(crate) use with_float_array;

/// The elements of an array argument (C-contiguous: [`checked`] refuses other layouts).
pub fn slice<'a, T: Element>(a: &'a PyReadonlyArrayDyn<'_, T>, name: &str) -> Result<&'a [T]> {
    a.as_slice().map_err(|_| not_contiguous(name))
}

/// An integer type a binding takes: its range, for the message that names the argument.
pub trait Int: TryFrom<i128> {
    const MIN: i128;
    const MAX: i128;
}

macro_rules! int_types {
    ($($t:ty),*) => {$(
        impl Int for $t {
            const MIN: i128 = <$t>::MIN as i128;
            const MAX: i128 = <$t>::MAX as i128;
        }
    )*};
}
int_types!(u32, u64, usize, i64);

/// `2**64 - 1` for a bound one below a power of two, else the number.
fn bound_text(b: i128) -> String {
    match b.checked_add(1) {
        Some(p) if p > 1 && p.count_ones() == 1 => format!("2**{} - 1", p.trailing_zeros()),
        _ => b.to_string(),
    }
}

/// An integer argument (a Python int or a numpy integer, not a bool) in the range of `T`:
/// kexue's message naming `name` and the range, never pyo3's "int too big to convert".
pub fn int<T: Int>(obj: &Bound<'_, PyAny>, name: &str) -> Result<T> {
    if obj.is_instance_of::<PyBool>() {
        return Err(Error::type_(name, "must be an int, got bool"));
    }
    let out_of_range = |got: String| {
        Error::value(
            name,
            format!(
                "must be between {} and {}, got {got}",
                bound_text(T::MIN),
                bound_text(T::MAX)
            ),
        )
    };
    match obj.extract::<i128>() {
        Ok(v) => T::try_from(v).map_err(|_| out_of_range(v.to_string())),
        Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => {
            Err(out_of_range(obj.str()?.to_string()))
        }
        Err(_) => Err(Error::type_(
            name,
            format!("must be an int, got {}", obj.get_type().name()?),
        )),
    }
}

/// Integers or (nested) sequences of integers, converted by [`ints`].
pub trait Ints: Sized {
    fn convert(obj: &Bound<'_, PyAny>, name: &str) -> Result<Self>;
}

impl<T: Int> Ints for T {
    fn convert(obj: &Bound<'_, PyAny>, name: &str) -> Result<Self> {
        int(obj, name)
    }
}

impl<T: Ints> Ints for Vec<T> {
    fn convert(obj: &Bound<'_, PyAny>, name: &str) -> Result<Self> {
        let not_a_sequence = || -> Result<Error> {
            Ok(Error::type_(
                name,
                format!("must be a sequence of ints, got {}", obj.get_type().name()?),
            ))
        };
        if obj.is_instance_of::<PyString>() {
            return Err(not_a_sequence()?);
        }
        let Ok(items) = obj.try_iter() else {
            return Err(not_a_sequence()?);
        };
        items
            .enumerate()
            .map(|(i, item)| T::convert(&item?, &format!("{name}[{i}]")))
            .collect()
    }
}

/// A sequence of integer arguments (or of sequences of them), each as [`int`]; messages
/// name the element (`forms[0][2]`).
pub fn ints<T: Ints>(obj: &Bound<'_, PyAny>, name: &str) -> Result<Vec<T>> {
    Vec::<T>::convert(obj, name)
}

/// How often the calling thread looks for signals (Ctrl-C) while a kernel runs.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Runs `kernel` with the GIL released, inside the kexue thread pool, and turns a panic into
/// a `RuntimeError`. The kernel runs on a pool thread while the calling thread checks for
/// signals every 50 ms: on one (`KeyboardInterrupt`), [`cancel`] is raised so that the kernel
/// stops at its next poll, and the signal's exception is returned once it has.
pub fn detached<R: Send>(
    py: Python<'_>,
    kernel: impl FnOnce() -> kexue_core::Result<R> + Send,
) -> Result<R> {
    detached_sized(py, usize::MAX, kernel)
}

/// Items of work below which a kernel is over in microseconds: it runs on the calling thread
/// (handing it to the pool and back costs ~5 µs, more than the work) and is not polled.
const SMALL_WORK: usize = parallel::MIN_CHUNK;

/// [`detached`] for a kernel of `work` items (elements, sentences, candidates): a small one
/// runs on the calling thread, GIL released and panics caught, without the signal polling.
pub fn detached_sized<R: Send>(
    py: Python<'_>,
    work: usize,
    kernel: impl FnOnce() -> kexue_core::Result<R> + Send,
) -> Result<R> {
    let guarded = || guard(kernel);
    if work < SMALL_WORK || rayon::current_thread_index().is_some() {
        // Small, or called from a pool thread (a callback of another kernel), where parking
        // the thread to poll could starve the pool and signals are the outer call's to see.
        return py.allow_threads(|| parallel::install(guarded));
    }
    // On the calling thread, with torch's OpenMP threads asleep rather than spinning.
    py.allow_threads(|| {
        crate::openmp::quiet(|| {
            let done = AtomicBool::new(false);
            let caller = thread::current();
            let mut result = None;
            let mut interrupted = None;
            parallel::in_place_scope(|scope| {
                scope.spawn(|_| {
                    result = Some(guarded());
                    done.store(true, Ordering::Release);
                    caller.unpark();
                });
                while !done.load(Ordering::Acquire) {
                    thread::park_timeout(SIGNAL_POLL);
                    if interrupted.is_none() && !done.load(Ordering::Acquire) {
                        if let Err(e) = Python::with_gil(|py| py.check_signals()) {
                            interrupted = Some((e, cancel::Request::new()));
                        }
                    }
                }
            });
            match (interrupted, result) {
                (Some((e, _request)), _) => Err(e.into()),
                (None, Some(result)) => result,
                (None, None) => unreachable!("the scope waits for its job"),
            }
        })
    })
}

/// `kernel`'s result, or its panic as a `RuntimeError`.
fn guard<R>(kernel: impl FnOnce() -> kexue_core::Result<R>) -> Result<R> {
    match catch_unwind(AssertUnwindSafe(kernel)) {
        Ok(result) => result.map_err(Error::from),
        Err(payload) => Err(panic_to_py(payload)),
    }
}

/// Runs `kernel` on the calling thread with the GIL released (work of microseconds, which a
/// hand-off to the pool would dominate), a panic turned into a `RuntimeError`.
pub fn on_caller<R: Send>(
    py: Python<'_>,
    kernel: impl FnOnce() -> kexue_core::Result<R> + Send,
) -> Result<R> {
    py.allow_threads(|| guard(kernel))
}

/// The element types of output arrays: floats, for which any bit pattern is a value, so an
/// output handed to a kernel before it is written holds no invalid element.
pub trait Float: Element + Copy + Send + Sync + private::Sealed {}
impl Float for f32 {}
impl Float for f64 {}

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A new float array that only this binding references until [`Out::into_any`] hands it to
/// Python, so [`Out::slice`] may lend its elements mutably.
pub struct Out<'py, T: Float>(Bound<'py, PyArrayDyn<T>>);

impl<'py, T: Float> Out<'py, T> {
    /// Uninitialised (the kernel writes every element; on error the array is dropped
    /// unread), or a `MemoryError` naming the output.
    pub fn new(py: Python<'py>, shape: &[usize]) -> Result<Self> {
        new_array(py, shape, false).map(Out)
    }

    /// Zero-filled, for kernels that accumulate into their output.
    pub fn zeros(py: Python<'py>, shape: &[usize]) -> Result<Self> {
        new_array(py, shape, true).map(Out)
    }

    pub fn slice(&mut self) -> &mut [T] {
        // SAFETY: the array was created by `new_array` and is reachable only through `self`,
        // borrowed mutably here.
        unsafe { self.0.as_slice_mut() }.expect("a new array is contiguous")
    }

    pub fn into_any(self) -> Bound<'py, PyAny> {
        self.0.into_any()
    }

    pub fn into_array(self) -> Bound<'py, PyArrayDyn<T>> {
        self.0
    }
}

fn new_array<'py, T: Float>(
    py: Python<'py>,
    shape: &[usize],
    zeroed: bool,
) -> Result<Bound<'py, PyArrayDyn<T>>> {
    let what = "output";
    let elements = shape
        .iter()
        .try_fold(1u128, |n, &d| n.checked_mul(d as u128))
        .unwrap_or(u128::MAX);
    let bytes = elements.saturating_mul(std::mem::size_of::<T>() as u128);
    memory::check_bytes(bytes, what)?;
    let mut dims: Vec<npy_intp> = shape.iter().map(|&d| d as npy_intp).collect();
    // SAFETY: the numpy C API is called with the GIL held, a dims array of `shape.len()`
    // entries, and a new reference to the dtype (which the callee steals). (numpy's own
    // constructors panic when the allocation fails; these return NULL.)
    let ptr = unsafe {
        let dtype = T::get_dtype(py).into_dtype_ptr();
        let ndim = dims.len() as c_int;
        if zeroed {
            PY_ARRAY_API.PyArray_Zeros(py, ndim, dims.as_mut_ptr(), dtype, 0)
        } else {
            let subtype = PY_ARRAY_API.get_type_object(py, NpyTypes::PyArray_Type);
            PY_ARRAY_API.PyArray_NewFromDescr(
                py,
                subtype,
                dtype,
                ndim,
                dims.as_mut_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
            )
        }
    };
    // SAFETY: a new reference or NULL with an exception set.
    match unsafe { Bound::from_owned_ptr_or_err(py, ptr) } {
        // SAFETY: numpy made an array of `T`'s dtype.
        Ok(a) => Ok(unsafe { a.downcast_into_unchecked() }),
        Err(e) if e.is_instance_of::<PyMemoryError>(py) => {
            Err(kexue_core::Error::memory(what, bytes).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// A new array of `shape` filled by `kernel` (GIL released); no zero-fill pass first.
pub fn filled<'py, T: Float>(
    py: Python<'py>,
    shape: &[usize],
    kernel: impl FnOnce(&mut [T]) -> kexue_core::Result<()> + Send,
) -> Result<Bound<'py, PyAny>> {
    let mut out = Out::<T>::new(py, shape)?;
    let data = out.slice();
    detached_sized(py, data.len(), || kernel(data))?;
    Ok(out.into_any())
}
