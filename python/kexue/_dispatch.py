"""Input validation and numpy/torch routing shared by every kexue kernel.

Every public function validates its arguments here and then calls a :class:`Kernel`:

* numpy (or anything ``np.asarray`` accepts) → the Rust kernel, GIL released;
* a torch tensor on the CPU → a ``torch.autograd.Function`` whose forward *and* backward
  call the Rust kernels on zero-copy ``Tensor.numpy()`` views;
* a torch tensor on any other device (or inside :func:`torch_fallback`) → the pure-torch
  implementation of the same maths.

torch is optional: it is imported only when a tensor is actually passed.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_force_torch = contextvars.ContextVar("kexue_force_torch", default=False)


@contextlib.contextmanager
def torch_fallback() -> Iterator[None]:
    """Route CPU tensors through the pure-torch implementation instead of Rust.

    Useful to compare the two roads, or to get double-backward where the kernel's torch
    road records its gradient (SquarePlus; the Rust road is differentiable once, and
    ``create_graph=True`` through it raises).

    >>> import kexue
    >>> with kexue.torch_fallback():
    ...     pass
    """
    token = _force_torch.set(True)
    try:
        yield
    finally:
        _force_torch.reset(token)


def is_tensor(x: Any) -> bool:
    """True for a ``torch.Tensor``, without importing torch when it is not loaded."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _describe(x: Any) -> str:
    dtype = getattr(x, "dtype", None)
    return f"dtype {dtype}" if dtype is not None else type(x).__name__


def check_float(
    x: Any,
    name: str,
    *,
    finite: bool = False,
    ndim: int | tuple[int, ...] | None = None,
) -> Any:
    """Validates a float input and returns it ready for a kernel.

    Tensors must be float32/float64 and are returned as they are. Anything else becomes a
    C-contiguous numpy array (copied only when it is not one already); integer and bool
    inputs become float64, as numpy's float functions do. Raises ``TypeError`` for other
    dtypes and ``ValueError`` for a wrong ``ndim`` or, with ``finite=True``, NaN/inf.
    """
    if is_tensor(x):
        import torch

        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be a float32 or float64 tensor, got {x.dtype}")
        values = x
    else:
        if isinstance(x, (str, bytes)):
            raise TypeError(f"{name} must be a float32 or float64 array, got {_describe(x)}")
        try:
            values = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a float32 or float64 array: {exc}") from None
        if values.dtype.kind in "biu":
            values = values.astype(np.float64)
        elif values.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be a float32 or float64 array, got {_describe(values)}")
        if not values.flags.c_contiguous:  # np.ascontiguousarray would turn 0-d into 1-d
            values = np.ascontiguousarray(values)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if values.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(values.shape)}")
    if finite:
        check_finite(values, name)
    return values


def check_finite(values: Any, name: str) -> None:
    """Raises ``ValueError`` naming the first NaN/inf entry of an array or tensor."""
    if is_tensor(values):
        import torch

        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            index = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(f"{name} must be finite, got {values[index].item()} at index {index}")
        return
    bad = ~np.isfinite(values)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be finite, got {values[index]} at index {index}")


def check_scalar(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """A finite real number within ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if not math.isfinite(value) or too_low or too_high:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            bounds.append(f"<= {high}")
        want = " and ".join(["finite", *bounds])
        raise ValueError(f"{name} must be {want}, got {value}")
    return value


def check_int(value: Any, name: str, *, low: int, high: int | None = None) -> int:
    """An int (Python or numpy, not bool) within ``[low, high]``: ``TypeError`` for another
    type, ``ValueError`` naming the bounds otherwise. Without ``high`` the bound is the
    largest native integer, 2**64 - 1 (beyond it the bindings could only say "int too big
    to convert")."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if high is None and value > _NATIVE_MAX:
        raise ValueError(f"{name} must be at most 2**64 - 1, got {value}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


_NATIVE_MAX = 2**64 - 1


def _machine_bytes() -> int | None:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    try:
        with open("/proc/meminfo") as f:
            swaps = (int(line.split()[1]) * 1024 for line in f if line.startswith("SwapTotal:"))
            swap = next(swaps, 0)
    except OSError:
        swap = 0
    return ram + swap


def check_request(nbytes: int, name: str) -> None:
    """``MemoryError`` naming ``name`` when ``nbytes`` exceed the machine's memory (RAM +
    swap): torch allocates such a request lazily and the process is killed later, when the
    pages are touched, where numpy and kexue's Rust kernels raise ``MemoryError``."""
    limit = _machine_bytes()
    if limit is not None and nbytes > limit:
        raise MemoryError(
            f"{name}: cannot allocate {nbytes / 2**30:.1f} GiB; "
            f"this machine has {limit / 2**30:.1f} GiB of memory"
        )


def unwrap_0d(result: np.ndarray) -> Any:
    """numpy's own convention: a 0-d result comes back as a numpy scalar."""
    return result[()] if result.ndim == 0 else result


Forward = Callable[..., Any]
# backward(inputs, outputs, grads, **params) -> one gradient (or None) per input.
Backward = Callable[..., tuple]


class Kernel:
    """One differentiable kernel with a Rust road and a pure-torch road.

    ``forward(*inputs, **params)`` and ``backward(inputs, outputs, grads, **params)`` work on
    numpy arrays and call Rust; ``torch_forward``/``torch_backward`` are the same maths in
    torch ops for other devices. Without ``torch_backward``, torch's autograd differentiates
    ``torch_forward`` directly. Inputs may be ``None`` (optional arguments); outputs are one
    array or a tuple of arrays.

    The Rust road is differentiable once: ``create_graph=True`` through it raises (torch
    would otherwise return a gradient with no graph, and a second derivative of 0). So does
    the torch road unless ``torch_backward_twice``: ``torch_backward`` is then torch ops on
    the inputs, which autograd records.
    """

    def __init__(
        self,
        forward: Forward,
        backward: Backward | None,
        *,
        torch_forward: Forward,
        torch_backward: Backward | None = None,
        torch_backward_twice: bool = False,
    ) -> None:
        self.forward = forward
        self.backward = backward
        self.torch_forward = torch_forward
        self.torch_backward = torch_backward
        self.torch_backward_twice = torch_backward_twice
        self._functions: dict[bool, Any] = {}

    def __call__(self, *inputs: Any, **params: Any) -> Any:
        lead = next((x for x in inputs if x is not None), None)
        if lead is None or not is_tensor(lead):
            out = self.forward(*inputs, **params)
            return unwrap_0d(out) if isinstance(out, np.ndarray) else out
        native = lead.device.type == "cpu" and not _force_torch.get()
        if not native and self.torch_backward is None:
            return self.torch_forward(*inputs, **params)
        return self._function(native).apply(params, *inputs)

    def _function(self, native: bool) -> Any:
        if native not in self._functions:
            if native:
                self._functions[native] = _autograd_function(
                    self.forward, self.backward, _tensor_to_numpy, _numpy_to_tensor, twice=False
                )
            else:
                self._functions[native] = _autograd_function(
                    self.torch_forward,
                    self.torch_backward,
                    _detached,
                    _identity,
                    twice=self.torch_backward_twice,
                )
        return self._functions[native]


def _tensor_to_numpy(t: Any) -> np.ndarray:
    # A zero-copy view; .contiguous() copies only when the tensor is not contiguous.
    return t.detach().contiguous().numpy()


def _numpy_to_tensor(a: Any) -> Any:
    import torch

    return torch.from_numpy(np.asarray(a))


def _detached(t: Any) -> Any:
    return t.detach()


def _identity(x: Any) -> Any:
    return x


def _autograd_function(
    forward: Forward,
    backward: Backward | None,
    to_backend: Callable[[Any], Any],
    from_backend: Callable[[Any], Any],
    *,
    twice: bool,
) -> Any:
    import torch

    def convert(xs: tuple, fn: Callable[[Any], Any]) -> tuple:
        return tuple(None if x is None else fn(x) for x in xs)

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, params: dict, *inputs: Any) -> Any:
            outputs = forward(*convert(inputs, to_backend), **params)
            single = not isinstance(outputs, tuple)
            outputs = convert((outputs,) if single else outputs, from_backend)
            present = [i for i, x in enumerate(inputs) if x is not None]
            ctx.params, ctx.present, ctx.n_inputs = params, present, len(inputs)
            ctx.save_for_backward(*(inputs[i] for i in present), *outputs)
            return outputs[0] if single else outputs

        @staticmethod
        def backward(ctx: Any, *grads: Any) -> Any:
            if backward is None:
                raise RuntimeError("this kexue kernel is not differentiable")
            # Grad mode is on in a backward pass only under create_graph=True.
            recording = torch.is_grad_enabled()
            if recording and not twice:
                raise RuntimeError(
                    "create_graph=True (a second derivative) is not supported here: kexue "
                    "computes this kernel's gradient outside autograd (differentiable once)"
                )
            saved = ctx.saved_tensors
            inputs: list[Any] = [None] * ctx.n_inputs
            for slot, i in enumerate(ctx.present):
                inputs[i] = saved[slot]
            outputs = saved[len(ctx.present) :]
            grads = tuple(
                torch.zeros_like(out) if g is None else g for g, out in zip(grads, outputs)
            )
            result = backward(
                # recorded: the inputs as they are, so autograd sees the gradient's formula
                convert(tuple(inputs), _identity if recording else to_backend),
                convert(tuple(outputs), to_backend),
                convert(grads, to_backend),
                **ctx.params,
            )
            return (None, *convert(tuple(result), from_backend))

    return Function
