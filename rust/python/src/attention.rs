//! Bindings of `kexue_core::attention`.

use kexue_core::attention::decode::Decoder;
use kexue_core::attention::features::{FeatureMap, Spec};
use kexue_core::attention::forms::{self, Dims, Grads, GradsOut, Inputs, Method, Outputs, State};
use kexue_core::attention::projection::{self, Scaling};
use kexue_core::attention::Real;
use numpy::{
    Element, PyArray2, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::arrays::{
    array, array_mut, checked, detached, int, on_caller, optional, slice, with_float_array, Dtype,
    Float, FloatArray, Out, Shape,
};
use crate::errors::{Error, Result};

fn check_4d(name: &str, shape: &[usize]) -> Result<()> {
    if shape.len() == 4 {
        Ok(())
    } else {
        Err(Error::value(
            name,
            format!("must have 4 dimensions (batch, heads, seq, dim), got shape {shape:?}"),
        ))
    }
}

/// `(q, k, v)` of one dtype with consistent `(batch, heads, seq, dim)` shapes.
fn qkv_dims<T: Element>(
    q: &PyReadonlyArrayDyn<'_, T>,
    k: &PyReadonlyArrayDyn<'_, T>,
    v: &PyReadonlyArrayDyn<'_, T>,
) -> Result<Dims> {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    check_4d("q", qs)?;
    if ks[..2] != qs[..2] || ks[3] != qs[3] {
        return Err(Error::value(
            "k",
            format!("must have shape (batch, heads, seq, features) matching q {qs:?}, got {ks:?}"),
        ));
    }
    if vs[..3] != ks[..3] {
        return Err(Error::value(
            "v",
            format!("must have the batch, heads and seq of k {ks:?}, got {vs:?}"),
        ));
    }
    Ok(Dims {
        bh: qs[0] * qs[1],
        nq: qs[2],
        nk: ks[2],
        m: qs[3],
        dv: vs[3],
    })
}

/// An `m × d` orthogonal random projection (float64) drawn from `seed`.
#[pyfunction]
fn attention_orthogonal_random<'py>(
    py: Python<'py>,
    m: &Bound<'py, PyAny>,
    d: &Bound<'py, PyAny>,
    seed: &Bound<'py, PyAny>,
    scaling_name: &str,
) -> Result<Bound<'py, PyArray2<f64>>> {
    let (m, d, seed): (usize, usize, u64) = (int(m, "m")?, int(d, "d")?, int(seed, "seed")?);
    let s: Scaling = scaling_name.parse()?;
    let w = detached(py, || projection::orthogonal_random(m, d, seed, s))?;
    Ok(numpy::PyArray1::from_vec(py, w).reshape([m, d])?)
}

fn spec<'a, T: Real + Element>(
    feature_map: &str,
    d: usize,
    projection: Option<&'a PyReadonlyArrayDyn<'_, T>>,
    is_query: bool,
    offset: Option<f64>,
) -> Result<Spec<'a, T>> {
    let map = feature_map.parse::<FeatureMap>()?;
    let projection = match projection {
        Some(w) => {
            let shape = w.shape();
            if shape.len() != 2 || shape[1] != d {
                return Err(Error::value(
                    "projection",
                    format!("must have shape (m, {d}), got {shape:?}"),
                ));
            }
            Some((slice(w, "projection")?, shape[0]))
        }
        None => None,
    };
    if let Some(c) = offset {
        if !c.is_finite() {
            return Err(Error::value("offset", format!("must be finite, got {c}")));
        }
    }
    Ok(Spec {
        map,
        d,
        projection,
        is_query,
        offset,
    })
}

fn last_dim(shape: &[usize]) -> Result<usize> {
    shape
        .last()
        .copied()
        .ok_or_else(|| Error::value("x", "must have at least 1 dimension"))
}

/// Feature map φ of the last axis of `x`: shape `x.shape[:-1] + (features,)`. With
/// `row_max` (keys of the `exp`-family maps, no offset), each row is stabilised by its own
/// largest logit and `(features, largest logits)` is returned, the second float64 of shape
/// `x.shape[:-1]`.
#[pyfunction]
#[pyo3(signature = (x, feature_map, projection, is_query, offset=None, row_max=false))]
fn attention_features_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    feature_map: &str,
    projection: Option<&Bound<'py, PyAny>>,
    is_query: bool,
    offset: Option<f64>,
    row_max: bool,
) -> Result<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(x, "x")?, x => {
        let w = projection.map(|p| array(p, "projection", Dtype::Of("x"), Shape::Ndim(2))).transpose()?;
        let d = last_dim(x.shape())?;
        let s = spec(feature_map, d, w.as_ref(), is_query, offset)?;
        if row_max && !s.running() {
            return Err(Error::value(
                "row_max",
                "needs keys of 'favor+', 'favor+hyperbolic' or 'exp' without an offset",
            ));
        }
        let xs = slice(&x, "x")?;
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("checked above") = s.out_dim();
        let mut out = Out::zeros(py, &shape)?;
        let os = out.slice();
        if row_max {
            let mut maxes = Out::<f64>::zeros(py, &x.shape()[..x.ndim() - 1])?;
            let ms = maxes.slice();
            detached(py, || s.forward_row_max(xs, os, ms))?;
            return Ok(PyTuple::new(py, [out.into_any(), maxes.into_any()])?.into_any());
        }
        detached(py, || s.forward(xs, os))?;
        Ok(out.into_any())
    })
}

/// `∂L/∂x` of the feature map from `x`, its features `phi` and `grad = ∂L/∂phi`.
#[pyfunction]
fn attention_features_backward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    feature_map: &str,
    projection: Option<&Bound<'py, PyAny>>,
    is_query: bool,
    phi: &Bound<'py, PyAny>,
    grad: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(x, "x")?, x => {
        let w = projection.map(|p| array(p, "projection", Dtype::Of("x"), Shape::Ndim(2))).transpose()?;
        let d = last_dim(x.shape())?;
        let s = spec(feature_map, d, w.as_ref(), is_query, None)?;
        let phi = array(phi, "phi", Dtype::Of("x"), Shape::Ndim(x.ndim()))?;
        let grad = array(grad, "grad", Dtype::Of("x"), Shape::Ndim(x.ndim()))?;
        let (xs, ps, gs) = (slice(&x, "x")?, slice(&phi, "phi")?, slice(&grad, "grad")?);
        let mut out = Out::zeros(py, x.shape())?;
        let os = out.slice();
        detached(py, || s.backward(xs, ps, gs, os))?;
        Ok(out.into_any())
    })
}

/// A feature map by name with its projection and key offset, applied inside the kernel.
type MapArgs<'a, 'py> = (&'a str, Option<&'a Bound<'py, PyAny>>, Option<f64>);

/// A causal state array and its stabilisers (`(B, H)` float64), when given.
type StateArgs<'a, 'py> = (&'a Bound<'py, PyAny>, Option<&'a Bound<'py, PyAny>>);

#[allow(clippy::too_many_arguments)]
fn forward_impl<'py, T: Real + Float>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, T>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    eps: f64,
    causal: Option<(Method, Option<StateArgs<'_, 'py>>)>,
    map: Option<MapArgs<'_, 'py>>,
    kmax: Option<&Bound<'py, PyAny>>,
) -> Result<Bound<'py, PyTuple>> {
    check_4d("q", q.shape())?;
    let k = array::<T>(k, "k", Dtype::Of("q"), Shape::Ndim(4))?;
    let v = array::<T>(v, "v", Dtype::Of("q"), Shape::Ndim(4))?;
    let dims = qkv_dims(&q, &k, &v)?;
    let x = Inputs {
        dims,
        q: slice(&q, "q")?,
        k: slice(&k, "k")?,
        v: slice(&v, "v")?,
    };
    let w = match map {
        Some((_, Some(p), _)) => Some(array::<T>(p, "projection", Dtype::Of("q"), Shape::Ndim(2))?),
        _ => None,
    };
    let specs = match map {
        Some((name, _, offset)) => Some((
            spec(name, dims.m, w.as_ref(), true, offset)?,
            spec(name, dims.m, w.as_ref(), false, offset)?,
        )),
        None => None,
    };
    let maps = specs.as_ref().map(|(a, b)| (a, b));
    let features = maps.map_or(dims.m, |(sq, _)| sq.out_dim());
    let qs = q.shape();
    let kmax = optional::<f64>(kmax, "kmax", Dtype::Own, Shape::Exact(&k.shape()[..3]))?;
    let kmax = kmax.as_ref().map(|a| slice(a, "kmax")).transpose()?;
    // Every form writes every element of `o` and `den`. (No zero-fill: a fresh zeroed array
    // costs page faults.)
    let mut o = Out::<T>::new(py, &[qs[0], qs[1], qs[2], dims.dv])?;
    let mut den = Out::<T>::new(py, &qs[..3])?;
    {
        let out = Outputs {
            o: o.slice(),
            den: den.slice(),
        };
        match causal {
            None => detached(py, || forms::non_causal_forward(&x, eps, out))?,
            Some((method, state)) => {
                let (mut kv, mut scale) = match state {
                    Some((kv, scale)) => {
                        let want = [qs[0], qs[1], features, dims.dv + 1];
                        let kv = array_mut::<f64>(kv, "state", Dtype::Own, Shape::Exact(&want))?;
                        let scale = match scale {
                            Some(c) => Some(array_mut::<f64>(
                                c,
                                "scale",
                                Dtype::Own,
                                Shape::Exact(&want[..2]),
                            )?),
                            // The stabiliser of a state is needed where it moves.
                            None if kmax.is_some()
                                || specs.as_ref().is_some_and(|(_, k)| k.running()) =>
                            {
                                return Err(Error::value(
                                    "scale",
                                    "is required with a state for this feature map",
                                ))
                            }
                            None => None,
                        };
                        (Some(kv), scale)
                    }
                    None => (None, None),
                };
                let mut unused = vec![0.0; dims.bh];
                let st = match kv.as_mut() {
                    Some(kv) => Some(State {
                        kv: kv.as_slice_mut()?,
                        scale: match scale.as_mut() {
                            Some(c) => c.as_slice_mut()?,
                            None => &mut unused,
                        },
                    }),
                    None => None,
                };
                detached(py, || match kmax {
                    Some(kmax) => forms::causal_forward_scaled(&x, kmax, eps, method, st, out),
                    None => forms::causal_forward_mapped(&x, maps, eps, method, st, out),
                })?
            }
        }
    }
    Ok(PyTuple::new(py, [o.into_any(), den.into_any()])?)
}

/// Causal linear attention on feature-mapped `(B, H, N, M)` q, k and `(B, H, N, Dv)` v;
/// returns `(o, den)`. `state` (`(B, H, M, Dv + 1)` float64), when given, is the initial
/// state and is overwritten with the final one. With `kmax` (`(B, H, N)` float64: each key
/// row stabilised by its own largest logit), the keys are taken under the running maximum of
/// `kmax`, and a state needs its `scale`.
#[pyfunction]
#[pyo3(signature = (q, k, v, eps, method, chunk_size, state=None, kmax=None, scale=None))]
#[allow(clippy::too_many_arguments)]
fn attention_causal_forward<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    eps: f64,
    method: &str,
    chunk_size: &Bound<'py, PyAny>,
    state: Option<&Bound<'py, PyAny>>,
    kmax: Option<&Bound<'py, PyAny>>,
    scale: Option<&Bound<'py, PyAny>>,
) -> Result<Bound<'py, PyTuple>> {
    let method = Method::parse(method, int(chunk_size, "chunk_size")?)?;
    let state = state.map(|s| (s, scale));
    with_float_array!(FloatArray::extract(q, "q")?, q => {
        forward_impl(py, q, k, v, eps, Some((method, state)), None, kmax)
    })
}

/// [`attention_causal_forward`] on raw `(B, H, N, D)` q and k, mapped by `feature_map` (with
/// `projection` `(m, D)` and the key offset) inside the kernel; the state has the map's
/// feature count, and `scale` (`(B, H)` float64, required with a state under the running
/// maximum) holds its stabilisers.
#[pyfunction]
#[pyo3(signature = (q, k, v, feature_map, projection, key_offset, eps, method, chunk_size, state=None, scale=None))]
#[allow(clippy::too_many_arguments)]
fn attention_causal_mapped_forward<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    feature_map: &str,
    projection: Option<&Bound<'py, PyAny>>,
    key_offset: Option<f64>,
    eps: f64,
    method: &str,
    chunk_size: &Bound<'py, PyAny>,
    state: Option<&Bound<'py, PyAny>>,
    scale: Option<&Bound<'py, PyAny>>,
) -> Result<Bound<'py, PyTuple>> {
    let method = Method::parse(method, int(chunk_size, "chunk_size")?)?;
    let map = Some((feature_map, projection, key_offset));
    let state = state.map(|s| (s, scale));
    with_float_array!(FloatArray::extract(q, "q")?, q => {
        forward_impl(py, q, k, v, eps, Some((method, state)), map, None)
    })
}

/// Non-causal linear attention; returns `(o, den)`.
#[pyfunction]
fn attention_noncausal_forward<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    eps: f64,
) -> Result<Bound<'py, PyTuple>> {
    with_float_array!(FloatArray::extract(q, "q")?, q => {
        forward_impl(py, q, k, v, eps, None, None, None)
    })
}

#[allow(clippy::too_many_arguments)]
fn backward_impl<'py, T: Real + Float>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, T>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    o: &Bound<'py, PyAny>,
    den: &Bound<'py, PyAny>,
    grad_o: &Bound<'py, PyAny>,
    grad_den: &Bound<'py, PyAny>,
    method: Option<Method>,
    eps: f64,
    kmax: Option<&Bound<'py, PyAny>>,
) -> Result<Bound<'py, PyTuple>> {
    check_4d("q", q.shape())?;
    let k = array::<T>(k, "k", Dtype::Of("q"), Shape::Ndim(4))?;
    let v = array::<T>(v, "v", Dtype::Of("q"), Shape::Ndim(4))?;
    let dims = qkv_dims(&q, &k, &v)?;
    let (o, go) = (
        array::<T>(o, "o", Dtype::Of("q"), Shape::Ndim(4))?,
        array::<T>(grad_o, "grad_o", Dtype::Of("q"), Shape::Ndim(4))?,
    );
    let (den, gden) = (
        array::<T>(den, "den", Dtype::Of("q"), Shape::Ndim(3))?,
        array::<T>(grad_den, "grad_den", Dtype::Of("q"), Shape::Ndim(3))?,
    );
    let x = Inputs {
        dims,
        q: slice(&q, "q")?,
        k: slice(&k, "k")?,
        v: slice(&v, "v")?,
    };
    let kmax = optional::<f64>(kmax, "kmax", Dtype::Own, Shape::Exact(&k.shape()[..3]))?;
    let kmax = kmax.as_ref().map(|a| slice(a, "kmax")).transpose()?;
    let g = Grads {
        o: slice(&o, "o")?,
        den: slice(&den, "den")?,
        go: slice(&go, "grad_o")?,
        gden: slice(&gden, "grad_den")?,
        eps,
    };
    // Causal: uninitialised (a fresh zeroed array costs page faults), since every causal
    // backward writes every element, and on error (an interrupt) the arrays are dropped
    // unread. (The non-causal one leaves dk, dv unwritten when there are no queries.)
    let alloc = if method.is_some() {
        Out::<T>::new
    } else {
        Out::<T>::zeros
    };
    let (mut dq, mut dk, mut dv) = (
        alloc(py, q.shape())?,
        alloc(py, k.shape())?,
        alloc(py, v.shape())?,
    );
    {
        let gout = GradsOut {
            dq: dq.slice(),
            dk: dk.slice(),
            dv: dv.slice(),
        };
        match method {
            Some(m) => detached(py, || forms::causal_backward(&x, kmax, m, &g, gout))?,
            None => detached(py, || forms::non_causal_backward(&x, &g, gout))?,
        }
    }
    Ok(PyTuple::new(
        py,
        [dq.into_any(), dk.into_any(), dv.into_any()],
    )?)
}

/// Gradients `(dq, dk, dv)` of [`attention_causal_forward`] (zero initial state) with `eps`
/// and `kmax`.
#[pyfunction]
#[pyo3(signature = (q, k, v, o, den, grad_o, grad_den, method, chunk_size, eps=0.0, kmax=None))]
#[allow(clippy::too_many_arguments)]
fn attention_causal_backward<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    o: &Bound<'py, PyAny>,
    den: &Bound<'py, PyAny>,
    grad_o: &Bound<'py, PyAny>,
    grad_den: &Bound<'py, PyAny>,
    method: &str,
    chunk_size: &Bound<'py, PyAny>,
    eps: f64,
    kmax: Option<&Bound<'py, PyAny>>,
) -> Result<Bound<'py, PyTuple>> {
    let method = Method::parse(method, int(chunk_size, "chunk_size")?)?;
    with_float_array!(FloatArray::extract(q, "q")?, q => {
        backward_impl(py, q, k, v, o, den, grad_o, grad_den, Some(method), eps, kmax)
    })
}

/// Gradients `(dq, dk, dv)` of [`attention_noncausal_forward`] with `eps`.
#[pyfunction]
#[pyo3(signature = (q, k, v, o, den, grad_o, grad_den, eps=0.0))]
#[allow(clippy::too_many_arguments)]
fn attention_noncausal_backward<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    o: &Bound<'py, PyAny>,
    den: &Bound<'py, PyAny>,
    grad_o: &Bound<'py, PyAny>,
    grad_den: &Bound<'py, PyAny>,
    eps: f64,
) -> Result<Bound<'py, PyTuple>> {
    with_float_array!(FloatArray::extract(q, "q")?, q => {
        backward_impl(py, q, k, v, o, den, grad_o, grad_den, None, eps, None)
    })
}

/// The float32 decoder of `kexue.attention.CausalState` (see `kexue_core::attention::decode`),
/// attached to the state's float64 `(B, H, M, Dv + 1)` array, which it reads when it starts
/// and after [`AttentionDecoder::flush`], and adds into every `FOLD` tokens.
#[pyclass(module = "kexue._native", name = "AttentionDecoder")]
struct AttentionDecoder {
    core: Decoder,
    state: Py<PyArrayDyn<f64>>,
    /// The state's stabilisers, `(B, H)`.
    scale: Py<PyArrayDyn<f64>>,
    /// `(batch, heads, d, dv)` of a token.
    shape: [usize; 4],
}

/// The elements of `x` when it is a C-contiguous float32 array of shape `shape`.
fn token<'py>(x: &Bound<'py, PyAny>, shape: &[usize]) -> Option<PyReadonlyArrayDyn<'py, f32>> {
    array(x, "x", Dtype::Own, Shape::Exact(shape)).ok()
}

#[pymethods]
impl AttentionDecoder {
    /// A decoder for float32 `(B, H, d)` tokens by `feature_map` (with a float32 `projection`
    /// `(m, d)` or None, and the key offset), continuing `state`; ValueError where it does not
    /// apply (feature or value counts not multiples of 16).
    ///
    /// `scale` (`(B, H)` float64) holds the state's key stabilisers and is updated with it;
    /// None (only for an empty state) starts from `-inf` in an array of the decoder's own.
    #[new]
    #[pyo3(signature = (feature_map, projection, key_offset, eps, d, state, scale=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        feature_map: &str,
        projection: Option<&Bound<'_, PyAny>>,
        key_offset: Option<f64>,
        eps: f64,
        d: &Bound<'_, PyAny>,
        state: &Bound<'_, PyAny>,
        scale: Option<&Bound<'_, PyAny>>,
    ) -> Result<Self> {
        let d = int(d, "d")?;
        let w = projection
            .map(|p| array::<f32>(p, "projection", Dtype::Own, Shape::Ndim(2)))
            .transpose()?;
        let (sq, sk) = (
            spec(feature_map, d, w.as_ref(), true, key_offset)?,
            spec(feature_map, d, w.as_ref(), false, key_offset)?,
        );
        let st = checked::<f64>(state, "state", Dtype::Own, Shape::Ndim(4))?;
        let shape = st.shape().to_vec();
        let m = sq.out_dim();
        if shape[2] != m || shape[3] < 2 {
            return Err(Error::value(
                "state",
                format!("must have shape (batch, heads, {m}, dv + 1), got {shape:?}"),
            ));
        }
        let sc = match scale {
            Some(c) => checked::<f64>(c, "scale", Dtype::Own, Shape::Exact(&shape[..2]))?,
            None => {
                let mut own = Out::<f64>::new(py, &shape[..2])?;
                own.slice().fill(f64::NEG_INFINITY);
                own.into_array()
            }
        };
        let core = Decoder::new(&sq, &sk, shape[0] * shape[1], shape[3] - 1, eps)?;
        Ok(AttentionDecoder {
            core,
            state: st.unbind(),
            scale: sc.unbind(),
            shape: [shape[0], shape[1], d, shape[3] - 1],
        })
    }

    /// The outputs `(B, H, Dv)` of one more token, or None (nothing done) when `q`, `k`, `v`
    /// are not C-contiguous float32 `(B, H, d)`, `(B, H, d)`, `(B, H, Dv)` arrays of this state.
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        q: &Bound<'py, PyAny>,
        k: &Bound<'py, PyAny>,
        v: &Bound<'py, PyAny>,
    ) -> Result<Option<Bound<'py, PyArrayDyn<f32>>>> {
        let [b, h, d, dv] = self.shape;
        let (Some(q), Some(k), Some(v)) = (
            token(q, &[b, h, d]),
            token(k, &[b, h, d]),
            token(v, &[b, h, dv]),
        ) else {
            return Ok(None);
        };
        let (qs, ks, vs) = (slice(&q, "q")?, slice(&k, "k")?, slice(&v, "v")?);
        // a successful step writes every element of `o`
        let mut o = Out::<f32>::new(py, &[b, h, dv])?;
        {
            let os = o.slice();
            let mut state = match self.core.needs_state() {
                true => Some((
                    self.state.bind(py).try_readwrite()?,
                    self.scale.bind(py).try_readwrite()?,
                )),
                false => None,
            };
            let st = match state.as_mut() {
                Some((kv, scale)) => Some(State {
                    kv: kv.as_slice_mut()?,
                    scale: scale.as_slice_mut()?,
                }),
                None => None,
            };
            let core = &mut self.core;
            if core.is_large() {
                detached(py, || core.step(qs, ks, vs, st, os))?;
            } else {
                // decoding a few heads: no hand-off to the pool's threads
                on_caller(py, || core.step(qs, ks, vs, st, os))?;
            }
        }
        Ok(Some(o.into_array()))
    }

    /// Adds the buffered tokens into the state array, which the decoder reads again before
    /// its next step (so the caller may change it in between).
    fn flush(&mut self, py: Python<'_>) -> Result<()> {
        let mut state = self.state.bind(py).try_readwrite()?;
        let mut scale = self.scale.bind(py).try_readwrite()?;
        let st = State {
            kv: state.as_slice_mut()?,
            scale: scale.as_slice_mut()?,
        };
        let core = &mut self.core;
        on_caller(py, || core.flush(st))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<AttentionDecoder>()?;
    m.add("ATTENTION_MAX_CHUNK", kexue_core::attention::MAX_CHUNK)?;
    m.add_function(wrap_pyfunction!(attention_orthogonal_random, m)?)?;
    m.add_function(wrap_pyfunction!(attention_features_forward, m)?)?;
    m.add_function(wrap_pyfunction!(attention_features_backward, m)?)?;
    m.add_function(wrap_pyfunction!(attention_causal_forward, m)?)?;
    m.add_function(wrap_pyfunction!(attention_causal_mapped_forward, m)?)?;
    m.add_function(wrap_pyfunction!(attention_causal_backward, m)?)?;
    m.add_function(wrap_pyfunction!(attention_noncausal_forward, m)?)?;
    m.add_function(wrap_pyfunction!(attention_noncausal_backward, m)?)?;
    Ok(())
}
