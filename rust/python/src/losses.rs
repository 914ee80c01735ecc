//! Bindings of `kexue_core::losses`.

use kexue_core::losses::global_pointer as gp;
use kexue_core::losses::{mlce, nxm, squareplus};
use numpy::{Element, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::arrays::{
    array, detached, filled, optional, slice, with_float_array, Dtype, FloatArray, Out, Shape,
};
use crate::errors::{Error, Result};

/// SquarePlus of a C-contiguous float array, as a new array of the same shape and dtype.
#[pyfunction]
fn squareplus_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    b: f64,
) -> Result<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(x, "x")?, x => {
        let xs = slice(&x, "x")?;
        filled(py, x.shape(), |out| squareplus::forward(xs, b, out))
    })
}

/// `grad * squareplus'(x)`: the vector-Jacobian product of SquarePlus.
#[pyfunction]
fn squareplus_backward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    grad: &Bound<'py, PyAny>,
    b: f64,
) -> Result<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(x, "x")?, x => {
        let grad = array(grad, "grad", Dtype::Of("x"), Shape::Exact(x.shape()))?;
        let (xs, gs) = (slice(&x, "x")?, slice(&grad, "grad")?);
        filled(py, x.shape(), |out| squareplus::backward(xs, gs, b, out))
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

fn opt_slice<'a, T: Element>(
    a: &'a Option<PyReadonlyArrayDyn<'_, T>>,
    name: &str,
) -> Result<Option<&'a [T]>> {
    a.as_ref().map(|a| slice(a, name)).transpose()
}

/// `(leading shape, last dimension)` of an array with at least `min_ndim` dimensions.
fn split_last(shape: &[usize], name: &str, min_ndim: usize) -> Result<(Vec<usize>, usize)> {
    if shape.len() < min_ndim {
        return Err(Error::value(
            name,
            format!("must have at least {min_ndim} dimension(s), got shape {shape:?}"),
        ));
    }
    let (&last, lead) = shape.split_last().expect("min_ndim >= 1");
    Ok((lead.to_vec(), last))
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
) -> Result<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    with_float_array!(FloatArray::extract(y_pred, "y_pred")?, s => {
        let (lead, cols) = split_last(s.shape(), "y_pred", 1)?;
        let t = array(y_true, "y_true", Dtype::Of("y_pred"), Shape::Exact(s.shape()))?;
        let m = optional::<u8>(mask, "mask", Dtype::Own, Shape::Exact(s.shape()))?;
        let a = mlce::Dense { y_pred: slice(&s, "y_pred")?, y_true: slice(&t, "y_true")?,
            mask: opt_slice(&m, "mask")?, cols, eps };
        let rows: usize = lead.iter().product();
        let (mut loss, mut stats) = (Out::new(py, &lead)?, Out::<f64>::new(py, &[rows, mlce::STATS])?);
        let (l, st) = (loss.slice(), stats.slice());
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
) -> Result<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(y_pred, "y_pred")?, s => {
        let (lead, cols) = split_last(s.shape(), "y_pred", 1)?;
        let t = array(y_true, "y_true", Dtype::Of("y_pred"), Shape::Exact(s.shape()))?;
        let m = optional::<u8>(mask, "mask", Dtype::Own, Shape::Exact(s.shape()))?;
        let rows: usize = lead.iter().product();
        let st = array::<f64>(stats, "stats", Dtype::Own, Shape::Exact(&[rows, mlce::STATS]))?;
        let g = array(grad_loss, "grad_loss", Dtype::Of("y_pred"), Shape::Exact(&lead))?;
        let a = mlce::Dense { y_pred: slice(&s, "y_pred")?, y_true: slice(&t, "y_true")?,
            mask: opt_slice(&m, "mask")?, cols, eps };
        let (st, g) = (slice(&st, "stats")?, slice(&g, "grad_loss")?);
        filled(py, s.shape(), |out| mlce::dense_backward(a, st, g, out))
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
) -> Result<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    with_float_array!(FloatArray::extract(y_pred, "y_pred")?, s => {
        let (lead, cols) = split_last(s.shape(), "y_pred", 1)?;
        let t = array::<i64>(y_true, "y_true", Dtype::Own, Shape::Any)?;
        let k = sparse_k(t.shape(), &lead)?;
        let a = mlce::Sparse { y_pred: slice(&s, "y_pred")?, y_true: slice(&t, "y_true")?,
            cols, k, mask_zero };
        let rows: usize = lead.iter().product();
        let (mut loss, mut stats) = (Out::new(py, &lead)?, Out::<f64>::new(py, &[rows, mlce::STATS])?);
        let (l, st) = (loss.slice(), stats.slice());
        detached(py, || mlce::sparse_forward(a, l, st))?;
        Ok((loss.into_any(), stats.into_any()))
    })
}

fn sparse_k(shape: &[usize], lead: &[usize]) -> Result<usize> {
    match shape.split_last() {
        Some((&k, l)) if l == lead => Ok(k),
        _ => Err(Error::value(
            "y_true",
            format!("must have shape {lead:?} + (k,) to match y_pred, got {shape:?}"),
        )),
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
) -> Result<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(y_pred, "y_pred")?, s => {
        let (lead, cols) = split_last(s.shape(), "y_pred", 1)?;
        let t = array::<i64>(y_true, "y_true", Dtype::Own, Shape::Any)?;
        let k = sparse_k(t.shape(), &lead)?;
        let rows: usize = lead.iter().product();
        let st = array::<f64>(stats, "stats", Dtype::Own, Shape::Exact(&[rows, mlce::STATS]))?;
        let g = array(grad_loss, "grad_loss", Dtype::Of("y_pred"), Shape::Exact(&lead))?;
        let a = mlce::Sparse { y_pred: slice(&s, "y_pred")?, y_true: slice(&t, "y_true")?,
            cols, k, mask_zero };
        let (st, g) = (slice(&st, "stats")?, slice(&g, "grad_loss")?);
        filled(py, s.shape(), |out| mlce::sparse_backward(a, st, g, out))
    })
}

/// Builds the score-kernel arguments from `q, k (B, L, Hq, d)`, optional biases
/// `(B, H, L)` and mask `(B, L)`.
macro_rules! gp_scores_args {
    ($q:ident, $k:ident, $rb:ident, $cb:ident, $m:ident, $rope:expr, $tril:expr) => {{
        let shape = $q.shape();
        let &[batch, len, qk_heads, head_size] = shape else {
            return Err(Error::value(
                "q",
                format!("must have shape (batch, length, heads, head_size), got {shape:?}"),
            ));
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
                _ => return Err(Error::value("row_bias", "and col_bias go together")),
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
) -> Result<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(q, "q")?, qa => {
        let ka = array(k, "k", Dtype::Of("q"), Shape::Exact(qa.shape()))?;
        let rb = optional(row_bias, "row_bias", Dtype::Of("q"), Shape::Any)?;
        let cb = optional(col_bias, "col_bias", Dtype::Of("q"), rb.as_ref().map_or(Shape::Any, |b| Shape::Exact(b.shape())))?;
        let m = optional::<u8>(mask, "mask", Dtype::Own, Shape::Any)?;
        let a = gp_scores_args!(qa, ka, rb, cb, m, rope, tril);
        let shape = [a.batch, a.heads, a.len, a.len];
        filled(py, &shape, |out| gp::scores_forward(a, out))
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
) -> Result<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(q, "q")?, qa => {
        let ka = array(k, "k", Dtype::Of("q"), Shape::Exact(qa.shape()))?;
        let rb = optional(row_bias, "row_bias", Dtype::Of("q"), Shape::Any)?;
        let cb = optional(col_bias, "col_bias", Dtype::Of("q"), rb.as_ref().map_or(Shape::Any, |b| Shape::Exact(b.shape())))?;
        let m = optional::<u8>(mask, "mask", Dtype::Own, Shape::Any)?;
        let a = gp_scores_args!(qa, ka, rb, cb, m, rope, tril);
        let g = array(grad, "grad", Dtype::Of("q"), Shape::Exact(&[a.batch, a.heads, a.len, a.len]))?;
        let g = slice(&g, "grad")?;
        let (mut dq, mut dk) = (Out::new(py, qa.shape())?, Out::new(py, qa.shape())?);
        let (dqs, dks) = (dq.slice(), dk.slice());
        let result = if a.bias.is_some() {
            let shape = [a.batch, a.heads, a.len];
            let (mut dr, mut dc) = (Out::new(py, &shape)?, Out::new(py, &shape)?);
            let (drs, dcs) = (dr.slice(), dc.slice());
            detached(py, || gp::scores_backward(a, g, dqs, dks, Some((drs, dcs))))?;
            (dq.into_any(), dk.into_any(), dr.into_any(), dc.into_any())
        } else {
            detached(py, || gp::scores_backward(a, g, dqs, dks, None))?;
            (dq.into_any(), dk.into_any(), py.None().into_bound(py), py.None().into_bound(py))
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
) -> Result<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(s, "s")?, sa => {
        let ta = array(t, "t", Dtype::Of("s"), Shape::Exact(sa.shape()))?;
        let m = optional::<u8>(mask, "mask", Dtype::Own, Shape::Exact(sa.shape()))?;
        let (rows, cols) = first_and_rest(sa.shape(), "s")?;
        let a = gp::Kl { s: slice(&sa, "s")?, t: slice(&ta, "t")?, mask: opt_slice(&m, "mask")?, cols };
        filled(py, &[rows], |out| gp::kl_forward(a, out))
    })
}

fn first_and_rest(shape: &[usize], name: &str) -> Result<(usize, usize)> {
    match shape.split_first() {
        Some((&rows, rest)) => Ok((rows, rest.iter().product())),
        None => Err(Error::value(
            name,
            "must have at least 1 dimension, got a 0-d array",
        )),
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
) -> Result<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    with_float_array!(FloatArray::extract(s, "s")?, sa => {
        let ta = array(t, "t", Dtype::Of("s"), Shape::Exact(sa.shape()))?;
        let m = optional::<u8>(mask, "mask", Dtype::Own, Shape::Exact(sa.shape()))?;
        let (rows, cols) = first_and_rest(sa.shape(), "s")?;
        let g = array(grad, "grad", Dtype::Of("s"), Shape::Exact(&[rows]))?;
        let a = gp::Kl { s: slice(&sa, "s")?, t: slice(&ta, "t")?, mask: opt_slice(&m, "mask")?, cols };
        let g = slice(&g, "grad")?;
        let (mut ds, mut dt) = (Out::new(py, sa.shape())?, Out::new(py, sa.shape())?);
        let (dss, dts) = (ds.slice(), dt.slice());
        detached(py, || gp::kl_backward(a, g, dss, dts))?;
        Ok((ds.into_any(), dt.into_any()))
    })
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
) -> Result<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let form: nxm::Form = form.parse()?;
    with_float_array!(FloatArray::extract(y_pred, "y_pred")?, s => {
        let (lead, n, m) = split_nm(s.shape())?;
        let t = array(y_true, "y_true", Dtype::Of("y_pred"), Shape::Exact(s.shape()))?;
        let a = nxm::Nxm { y_pred: slice(&s, "y_pred")?, y_true: slice(&t, "y_true")?, n, m, form };
        let rows: usize = lead.iter().product();
        let (mut loss, mut stats) = (Out::new(py, &lead)?, Out::<f64>::new(py, &[rows, m])?);
        let (l, st) = (loss.slice(), stats.slice());
        detached(py, || nxm::forward(a, l, st))?;
        Ok((loss.into_any(), stats.into_any()))
    })
}

fn split_nm(shape: &[usize]) -> Result<(Vec<usize>, usize, usize)> {
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
) -> Result<Bound<'py, PyAny>> {
    let form: nxm::Form = form.parse()?;
    with_float_array!(FloatArray::extract(y_pred, "y_pred")?, s => {
        let (lead, n, m) = split_nm(s.shape())?;
        let t = array(y_true, "y_true", Dtype::Of("y_pred"), Shape::Exact(s.shape()))?;
        let rows: usize = lead.iter().product();
        let st = array::<f64>(stats, "stats", Dtype::Own, Shape::Exact(&[rows, m]))?;
        let g = array(grad_loss, "grad_loss", Dtype::Of("y_pred"), Shape::Exact(&lead))?;
        let a = nxm::Nxm { y_pred: slice(&s, "y_pred")?, y_true: slice(&t, "y_true")?, n, m, form };
        let (st, g) = (slice(&st, "stats")?, slice(&g, "grad_loss")?);
        filled(py, s.shape(), |out| nxm::backward(a, st, g, out))
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
