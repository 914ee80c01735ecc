//! Bindings of `kexue_core::losses`.

use kexue_core::losses::global_pointer as gp;
use kexue_core::losses::{mlce, nxm, squareplus};
use numpy::{Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::arrays::{self, detached, filled, same_as, slice, with_float_array, FloatArray};

/// SquarePlus of a C-contiguous float array, as a new array of the same shape and dtype.
#[pyfunction]
fn squareplus_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    b: f64,
) -> PyResult<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(x, "x")?, x => {
        let xs = slice(&x, "x")?;
        Ok(filled(py, x.shape(), |out| squareplus::forward(xs, b, out))?.into_any())
    })
}

/// `grad * squareplus'(x)`: the vector-Jacobian product of SquarePlus.
#[pyfunction]
fn squareplus_backward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    grad: &Bound<'py, PyAny>,
    b: f64,
) -> PyResult<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(x, "x")?, x => {
        let grad = same_as(grad, "grad", &x, "x")?;
        let (xs, gs) = (slice(&x, "x")?, slice(&grad, "grad")?);
        Ok(filled(py, x.shape(), |out| squareplus::backward(xs, gs, b, out))?.into_any())
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("SQUAREPLUS_B_DEFAULT", squareplus::B_DEFAULT)?;
    m.add("SQUAREPLUS_B_SOFTPLUS_UPPER", squareplus::B_SOFTPLUS_UPPER)?;
    m.add(
        "SQUAREPLUS_B_SOFTPLUS_MINIMAX",
        squareplus::B_SOFTPLUS_MINIMAX,
    )?;
    m.add_function(wrap_pyfunction!(squareplus_forward, m)?)?;
    m.add_function(wrap_pyfunction!(squareplus_backward, m)?)?;
    register_mlce(m)
}

// --- multi-label CE, GlobalPointer, n×m loss ------------------------------------------

/// A read-only numpy array of exactly dtype `T` and, when given, shape `shape`.
fn typed<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    dtype: &str,
    shape: Option<&[usize]>,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let a = arrays::typed(obj, name, &format!("a {dtype} numpy array"))?;
    if let Some(shape) = shape {
        if a.shape() != shape {
            return Err(PyValueError::new_err(format!(
                "{name} must have shape {shape:?}, got {:?}",
                a.shape()
            )));
        }
    }
    Ok(a)
}

fn optional<'py, T: Element>(
    obj: Option<&Bound<'py, PyAny>>,
    name: &str,
    dtype: &str,
    shape: Option<&[usize]>,
) -> PyResult<Option<PyReadonlyArrayDyn<'py, T>>> {
    obj.filter(|o| !o.is_none())
        .map(|o| typed(o, name, dtype, shape))
        .transpose()
}

fn opt_slice<'a, T: Element>(
    a: &'a Option<PyReadonlyArrayDyn<'_, T>>,
    name: &str,
) -> PyResult<Option<&'a [T]>> {
    a.as_ref().map(|a| slice(a, name)).transpose()
}

/// `(leading shape, last dimension)` of an array with at least `min_ndim` dimensions.
fn split_last(shape: &[usize], name: &str, min_ndim: usize) -> PyResult<(Vec<usize>, usize)> {
    if shape.len() < min_ndim {
        return Err(PyValueError::new_err(format!(
            "{name} must have at least {min_ndim} dimension(s), got shape {shape:?}"
        )));
    }
    let (&last, lead) = shape.split_last().expect("min_ndim >= 1");
    Ok((lead.to_vec(), last))
}

/// The mutable data of an array created in this call (numpy arrays are shared through
/// `&Bound`, so the mutable view necessarily comes from a shared reference).
#[allow(clippy::mut_from_ref)]
fn data<'a, T: Element>(a: &'a Bound<'_, PyArrayDyn<T>>) -> &'a mut [T] {
    // SAFETY: only called on arrays just created by `arrays::zeros`, which nothing else references.
    unsafe { a.as_slice_mut() }.expect("a new array is contiguous")
}

/// Per-row loss and the `[L_neg, L_pos]` statistics backward needs, for dense labels
/// (hard or soft) of the shape of `y_pred` and an optional uint8 keep-mask.
#[pyfunction]
#[pyo3(signature = (y_pred, y_true, mask, eps))]
fn mlce_forward<'py>(
    py: Python<'py>,
    y_pred: &Bound<'py, PyAny>,
    y_true: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    eps: f64,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    with_float_array!(FloatArray::extract(y_pred, "y_pred")?, s => {
        let (lead, cols) = split_last(s.shape(), "y_pred", 1)?;
        let t = same_as(y_true, "y_true", &s, "y_pred")?;
        let m = optional::<u8>(mask, "mask", "uint8", Some(s.shape()))?;
        let a = mlce::Dense { y_pred: slice(&s, "y_pred")?, y_true: slice(&t, "y_true")?,
            mask: opt_slice(&m, "mask")?, cols, eps };
        let rows: usize = lead.iter().product();
        let (loss, stats) = (arrays::zeros(py, &lead, "output")?, arrays::zeros::<f64>(py, &[rows, mlce::STATS], "output")?);
        let (l, st) = (data(&loss), data(&stats));
        detached(py, || mlce::dense_forward(a, l, st))?;
        Ok((loss.into_any(), stats.into_any()))
    })
}

/// `grad_loss · ∂loss/∂y_pred` for [`mlce_forward`]'s arguments and statistics.
#[pyfunction]
#[pyo3(signature = (y_pred, y_true, mask, eps, stats, grad_loss))]
fn mlce_backward<'py>(
    py: Python<'py>,
    y_pred: &Bound<'py, PyAny>,
    y_true: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    eps: f64,
    stats: &Bound<'py, PyAny>,
    grad_loss: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(y_pred, "y_pred")?, s => {
        let (lead, cols) = split_last(s.shape(), "y_pred", 1)?;
        let t = same_as(y_true, "y_true", &s, "y_pred")?;
        let m = optional::<u8>(mask, "mask", "uint8", Some(s.shape()))?;
        let rows: usize = lead.iter().product();
        let st = typed::<f64>(stats, "stats", "float64", Some(&[rows, mlce::STATS]))?;
        let g = typed(grad_loss, "grad_loss", "y_pred dtype", Some(&lead))?;
        let a = mlce::Dense { y_pred: slice(&s, "y_pred")?, y_true: slice(&t, "y_true")?,
            mask: opt_slice(&m, "mask")?, cols, eps };
        let (st, g) = (slice(&st, "stats")?, slice(&g, "grad_loss")?);
        Ok(filled(py, s.shape(), |out| mlce::dense_backward(a, st, g, out))?.into_any())
    })
}

/// Sparse form: `y_true` is int64 `(..., k)` positive class indices for `y_pred (..., C)`.
#[pyfunction]
#[pyo3(signature = (y_pred, y_true, mask_zero))]
fn sparse_mlce_forward<'py>(
    py: Python<'py>,
    y_pred: &Bound<'py, PyAny>,
    y_true: &Bound<'py, PyAny>,
    mask_zero: bool,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    with_float_array!(FloatArray::extract(y_pred, "y_pred")?, s => {
        let (lead, cols) = split_last(s.shape(), "y_pred", 1)?;
        let t = typed::<i64>(y_true, "y_true", "int64", None)?;
        let k = sparse_k(t.shape(), &lead)?;
        let a = mlce::Sparse { y_pred: slice(&s, "y_pred")?, y_true: slice(&t, "y_true")?,
            cols, k, mask_zero };
        let rows: usize = lead.iter().product();
        let (loss, stats) = (arrays::zeros(py, &lead, "output")?, arrays::zeros::<f64>(py, &[rows, mlce::STATS], "output")?);
        let (l, st) = (data(&loss), data(&stats));
        detached(py, || mlce::sparse_forward(a, l, st))?;
        Ok((loss.into_any(), stats.into_any()))
    })
}

fn sparse_k(shape: &[usize], lead: &[usize]) -> PyResult<usize> {
    match shape.split_last() {
        Some((&k, l)) if l == lead => Ok(k),
        _ => Err(PyValueError::new_err(format!(
            "y_true must have shape {lead:?} + (k,) to match y_pred, got {shape:?}"
        ))),
    }
}

/// `grad_loss · ∂loss/∂y_pred` for [`sparse_mlce_forward`].
#[pyfunction]
#[pyo3(signature = (y_pred, y_true, mask_zero, stats, grad_loss))]
fn sparse_mlce_backward<'py>(
    py: Python<'py>,
    y_pred: &Bound<'py, PyAny>,
    y_true: &Bound<'py, PyAny>,
    mask_zero: bool,
    stats: &Bound<'py, PyAny>,
    grad_loss: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(y_pred, "y_pred")?, s => {
        let (lead, cols) = split_last(s.shape(), "y_pred", 1)?;
        let t = typed::<i64>(y_true, "y_true", "int64", None)?;
        let k = sparse_k(t.shape(), &lead)?;
        let rows: usize = lead.iter().product();
        let st = typed::<f64>(stats, "stats", "float64", Some(&[rows, mlce::STATS]))?;
        let g = typed(grad_loss, "grad_loss", "y_pred dtype", Some(&lead))?;
        let a = mlce::Sparse { y_pred: slice(&s, "y_pred")?, y_true: slice(&t, "y_true")?,
            cols, k, mask_zero };
        let (st, g) = (slice(&st, "stats")?, slice(&g, "grad_loss")?);
        Ok(filled(py, s.shape(), |out| mlce::sparse_backward(a, st, g, out))?.into_any())
    })
}

/// Builds the score-kernel arguments from `q, k (B, L, Hq, d)`, optional biases
/// `(B, H, L)` and mask `(B, L)`.
macro_rules! gp_scores_args {
    ($q:ident, $k:ident, $rb:ident, $cb:ident, $m:ident, $rope:expr, $tril:expr) => {{
        let shape = $q.shape();
        let &[batch, len, qk_heads, head_size] = shape else {
            return Err(PyValueError::new_err(format!(
                "q must have shape (batch, length, heads, head_size), got {shape:?}"
            )));
        };
        let heads = $rb
            .as_ref()
            .map_or(qk_heads, |b| b.shape().get(1).copied().unwrap_or(0));
        gp::Scores {
            q: slice(&$q, "q")?,
            k: slice(&$k, "k")?,
            bias: match (opt_slice(&$rb, "row_bias")?, opt_slice(&$cb, "col_bias")?) {
                (Some(r), Some(c)) => Some((r, c)),
                (None, None) => None,
                _ => return Err(PyValueError::new_err("row_bias and col_bias go together")),
            },
            mask: opt_slice(&$m, "mask")?,
            batch,
            len,
            heads,
            qk_heads,
            head_size,
            rope: $rope,
            tril: $tril,
        }
    }};
}

/// GlobalPointer scores `(B, H, L, L)`; masked and (with `tril`) lower-triangle entries are -inf.
#[pyfunction]
#[pyo3(signature = (q, k, row_bias, col_bias, mask, rope, tril))]
#[allow(clippy::too_many_arguments)]
fn gp_scores_forward<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    row_bias: Option<&Bound<'py, PyAny>>,
    col_bias: Option<&Bound<'py, PyAny>>,
    mask: Option<&Bound<'py, PyAny>>,
    rope: bool,
    tril: bool,
) -> PyResult<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(q, "q")?, qa => {
        let ka = same_as(k, "k", &qa, "q")?;
        let rb = optional(row_bias, "row_bias", "q dtype", None)?;
        let cb = optional(col_bias, "col_bias", "q dtype", rb.as_ref().map(|b| b.shape()))?;
        let m = optional::<u8>(mask, "mask", "uint8", None)?;
        let a = gp_scores_args!(qa, ka, rb, cb, m, rope, tril);
        let shape = [a.batch, a.heads, a.len, a.len];
        Ok(filled(py, &shape, |out| gp::scores_forward(a, out))?.into_any())
    })
}

/// Gradients `(dq, dk, d_row_bias, d_col_bias)` of the scores (the biases' are None
/// without biases).
#[pyfunction]
#[pyo3(signature = (q, k, row_bias, col_bias, mask, rope, tril, grad))]
#[allow(clippy::too_many_arguments)]
fn gp_scores_backward<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    row_bias: Option<&Bound<'py, PyAny>>,
    col_bias: Option<&Bound<'py, PyAny>>,
    mask: Option<&Bound<'py, PyAny>>,
    rope: bool,
    tril: bool,
    grad: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(q, "q")?, qa => {
        let ka = same_as(k, "k", &qa, "q")?;
        let rb = optional(row_bias, "row_bias", "q dtype", None)?;
        let cb = optional(col_bias, "col_bias", "q dtype", rb.as_ref().map(|b| b.shape()))?;
        let m = optional::<u8>(mask, "mask", "uint8", None)?;
        let a = gp_scores_args!(qa, ka, rb, cb, m, rope, tril);
        let g = typed(grad, "grad", "q dtype", Some(&[a.batch, a.heads, a.len, a.len]))?;
        let g = slice(&g, "grad")?;
        let (dq, dk) = (arrays::zeros(py, qa.shape(), "output")?, arrays::zeros(py, qa.shape(), "output")?);
        let (dqs, dks) = (data(&dq), data(&dk));
        let result = if a.bias.is_some() {
            let shape = [a.batch, a.heads, a.len];
            let (dr, dc) = (arrays::zeros(py, &shape, "output")?, arrays::zeros(py, &shape, "output")?);
            let (drs, dcs) = (data(&dr), data(&dc));
            detached(py, || gp::scores_backward(a, g, dqs, dks, Some((drs, dcs))))?;
            (dq, dk, dr.into_any(), dc.into_any())
        } else {
            detached(py, || gp::scores_backward(a, g, dqs, dks, None))?;
            (dq, dk, py.None().into_bound(py), py.None().into_bound(py))
        };
        Ok(result.into_pyobject(py)?.into_any())
    })
}

/// `D[b] = Σ (σ(s)-σ(t))(s-t)` over all but the first axis; entries masked out or -inf in
/// both inputs give 0.
#[pyfunction]
#[pyo3(signature = (s, t, mask))]
fn gp_kl_forward<'py>(
    py: Python<'py>,
    s: &Bound<'py, PyAny>,
    t: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(s, "s")?, sa => {
        let ta = same_as(t, "t", &sa, "s")?;
        let m = optional::<u8>(mask, "mask", "uint8", Some(sa.shape()))?;
        let (rows, cols) = first_and_rest(sa.shape(), "s")?;
        let a = gp::Kl { s: slice(&sa, "s")?, t: slice(&ta, "t")?, mask: opt_slice(&m, "mask")?, cols };
        Ok(filled(py, &[rows], |out| gp::kl_forward(a, out))?.into_any())
    })
}

fn first_and_rest(shape: &[usize], name: &str) -> PyResult<(usize, usize)> {
    match shape.split_first() {
        Some((&rows, rest)) => Ok((rows, rest.iter().product())),
        None => Err(PyValueError::new_err(format!(
            "{name} must have at least 1 dimension, got a 0-d array"
        ))),
    }
}

/// `(grad·∂D/∂s, grad·∂D/∂t)` for [`gp_kl_forward`].
#[pyfunction]
#[pyo3(signature = (s, t, mask, grad))]
fn gp_kl_backward<'py>(
    py: Python<'py>,
    s: &Bound<'py, PyAny>,
    t: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    grad: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    with_float_array!(FloatArray::extract(s, "s")?, sa => {
        let ta = same_as(t, "t", &sa, "s")?;
        let m = optional::<u8>(mask, "mask", "uint8", Some(sa.shape()))?;
        let (rows, cols) = first_and_rest(sa.shape(), "s")?;
        let g = typed(grad, "grad", "s dtype", Some(&[rows]))?;
        let a = gp::Kl { s: slice(&sa, "s")?, t: slice(&ta, "t")?, mask: opt_slice(&m, "mask")?, cols };
        let g = slice(&g, "grad")?;
        let (ds, dt) = (arrays::zeros(py, sa.shape(), "output")?, arrays::zeros(py, sa.shape(), "output")?);
        let (dss, dts) = (data(&ds), data(&dt));
        detached(py, || gp::kl_backward(a, g, dss, dts))?;
        Ok((ds.into_any(), dt.into_any()))
    })
}

fn nxm_form(form: &str) -> PyResult<nxm::Form> {
    match form {
        "analogy" => Ok(nxm::Form::Analogy),
        "centered" => Ok(nxm::Form::Centered),
        _ => Err(PyValueError::new_err(format!(
            "form must be 'analogy' or 'centered', got {form:?}"
        ))),
    }
}

/// n×m loss per sample of `y_pred (..., n, m)` and label weights of the same shape, with
/// the per-class statistics backward needs.
#[pyfunction]
#[pyo3(signature = (y_pred, y_true, form))]
fn nxm_forward<'py>(
    py: Python<'py>,
    y_pred: &Bound<'py, PyAny>,
    y_true: &Bound<'py, PyAny>,
    form: &str,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let form = nxm_form(form)?;
    with_float_array!(FloatArray::extract(y_pred, "y_pred")?, s => {
        let (lead, n, m) = split_nm(s.shape())?;
        let t = same_as(y_true, "y_true", &s, "y_pred")?;
        let a = nxm::Nxm { y_pred: slice(&s, "y_pred")?, y_true: slice(&t, "y_true")?, n, m, form };
        let rows: usize = lead.iter().product();
        let (loss, stats) = (arrays::zeros(py, &lead, "output")?, arrays::zeros::<f64>(py, &[rows, m], "output")?);
        let (l, st) = (data(&loss), data(&stats));
        detached(py, || nxm::forward(a, l, st))?;
        Ok((loss.into_any(), stats.into_any()))
    })
}

fn split_nm(shape: &[usize]) -> PyResult<(Vec<usize>, usize, usize)> {
    let (rest, m) = split_last(shape, "y_pred", 2)?;
    let (lead, n) = split_last(&rest, "y_pred", 1)?;
    Ok((lead, n, m))
}

/// `grad · ∂loss/∂y_pred` for [`nxm_forward`].
#[pyfunction]
#[pyo3(signature = (y_pred, y_true, form, stats, grad_loss))]
fn nxm_backward<'py>(
    py: Python<'py>,
    y_pred: &Bound<'py, PyAny>,
    y_true: &Bound<'py, PyAny>,
    form: &str,
    stats: &Bound<'py, PyAny>,
    grad_loss: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let form = nxm_form(form)?;
    with_float_array!(FloatArray::extract(y_pred, "y_pred")?, s => {
        let (lead, n, m) = split_nm(s.shape())?;
        let t = same_as(y_true, "y_true", &s, "y_pred")?;
        let rows: usize = lead.iter().product();
        let st = typed::<f64>(stats, "stats", "float64", Some(&[rows, m]))?;
        let g = typed(grad_loss, "grad_loss", "y_pred dtype", Some(&lead))?;
        let a = nxm::Nxm { y_pred: slice(&s, "y_pred")?, y_true: slice(&t, "y_true")?, n, m, form };
        let (st, g) = (slice(&st, "stats")?, slice(&g, "grad_loss")?);
        Ok(filled(py, s.shape(), |out| nxm::backward(a, st, g, out))?.into_any())
    })
}

fn register_mlce(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MLCE_EPS_DEFAULT", mlce::EPS_DEFAULT)?;
    m.add_function(wrap_pyfunction!(mlce_forward, m)?)?;
    m.add_function(wrap_pyfunction!(mlce_backward, m)?)?;
    m.add_function(wrap_pyfunction!(sparse_mlce_forward, m)?)?;
    m.add_function(wrap_pyfunction!(sparse_mlce_backward, m)?)?;
    m.add_function(wrap_pyfunction!(gp_scores_forward, m)?)?;
    m.add_function(wrap_pyfunction!(gp_scores_backward, m)?)?;
    m.add_function(wrap_pyfunction!(gp_kl_forward, m)?)?;
    m.add_function(wrap_pyfunction!(gp_kl_backward, m)?)?;
    m.add_function(wrap_pyfunction!(nxm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(nxm_backward, m)?)?;
    Ok(())
}
