"""Every binding of the extension, fed garbage: it may raise an Exception, never panic or crash.

A Rust panic surfaces as ``pyo3_runtime.PanicException``, a ``BaseException`` that is not an
``Exception``: the fuzz fails naming the call. The fuzz itself runs in a child process
(``test_fuzz_in_a_child_process``), so that a signal ending a call (SIGSEGV, SIGBUS, SIGABRT
from an abort) is reported as such instead of ending the test run.
"""

from __future__ import annotations

import inspect
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from kexue import _native

CHILD = os.environ.get("KEXUE_FUZZ_CHILD") == "1"
in_child = pytest.mark.skipif(not CHILD, reason="run in a child by test_fuzz_in_a_child_process")


def test_fuzz_in_a_child_process() -> None:
    if CHILD:
        pytest.skip("this is the child")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env={**os.environ, "KEXUE_FUZZ_CHILD": "1"},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    report = proc.stdout[-4000:] + proc.stderr[-4000:]  # faulthandler names the call
    assert proc.returncode >= 0, f"signal {-proc.returncode} ended a binding call:\n{report}"
    assert proc.returncode == 0, report


GARBAGE = [
    None,
    "",
    "no-such-file.bin",
    b"\xff\xfe",
    -1,
    0,
    1,
    3,
    2**70,
    -1.5,
    float("nan"),
    float("inf"),
    [],
    [[1.0, 2.0], [3.0]],
    np.array(1.0),
    np.zeros(0, np.float32),
    np.zeros((0, 3)),
    np.ones((2, 3), np.float32),
    np.ones((3, 2)),
    np.ones((4, 4))[::2, ::2],
    np.array([np.nan, np.inf, -np.inf]),
    np.array([1, 2, 3]),
    np.array([0, 5], np.int64),
    np.array(["a", "b"]),
    np.ones((2, 2, 2, 2), np.float32),
]

FUNCTIONS = sorted(
    name
    for name, obj in vars(_native).items()
    if callable(obj) and not isinstance(obj, type) and name != "_panic_in_kernel"
)


def arity(fn: object) -> int:
    try:
        return len(inspect.signature(fn).parameters)  # from pyo3's __text_signature__
    except (TypeError, ValueError):
        return 3


@in_child
@pytest.mark.parametrize("name", FUNCTIONS)
def test_no_panic_on_garbage(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # bindings that write files write here
    fn = getattr(_native, name)
    rng = random.Random(name)
    n = arity(fn)
    for k in (n, n, n, n + 1, max(n - 1, 0)):
        feed_garbage(fn, rng, k, 1)
    feed_garbage(fn, rng, n, 300)
    _native.set_num_threads(0)  # garbage may have resized the pool


# What garbage may raise: a wrong type or value, a file that is not there or not a model, a
# request too large. Not OverflowError: an int out of range gets kexue's message (naming the
# argument and its range), never pyo3's "int too big to convert". Not RuntimeError: that is a
# panic caught at the boundary (a bug).
EXPECTED = (TypeError, ValueError, OSError, MemoryError)


def parameters(fn: object) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def feed_garbage(fn: object, rng: random.Random, arity: int, calls: int) -> None:
    """Calls ``fn`` with ``calls`` random tuples of ``arity`` garbage arguments; it may raise
    one of EXPECTED, whose message names what is wrong: a parameter, the argument count, or
    the file the argument named."""
    names = {n.lower() for n in parameters(fn)} | {"argument", "constructor"}
    for _ in range(calls):
        args = [rng.choice(GARBAGE) for _ in range(arity)]
        try:
            fn(*args)
        except EXPECTED as e:
            message = str(e)
            assert message and "internal error" not in message, (fn, args, e)
            files = {a for a in args if isinstance(a, str) and a}
            assert any(n in message.lower() for n in names | files), (fn, args, e)
        except BaseException as e:
            if type(e).__name__ == "PanicException":
                pytest.fail(f"a Rust panic reached Python: {fn}{tuple(args)!r}: {e}")
            raise


def test_a_panic_becomes_an_ordinary_exception() -> None:
    """The boundary catches a panic in a kernel: RuntimeError, which ``except Exception``
    catches (pyo3's PanicException is a BaseException)."""
    with pytest.raises(RuntimeError, match="internal error in kexue .*forced by a test"):
        _native._panic_in_kernel()
    assert _native.get_num_threads() >= 1  # the pool survived


def test_every_binding_is_exercised() -> None:
    assert "squareplus_forward" in FUNCTIONS and "set_num_threads" in FUNCTIONS


def _instances() -> dict:
    """A valid instance of each native class (methods are fuzzed on these)."""
    corpus = _native.NgramCorpus()
    corpus.add_sentences(["a b c", "a c b", "b a"])
    model, backward = corpus.build(2, True, 1, True)
    d, heads = 16, 2
    decoder = _native.AttentionDecoder(
        "favor+",
        np.ones((d, d), np.float32),
        None,
        1e-6,
        d,
        np.zeros((1, heads, d, d + 1)),
        np.zeros((1, heads)),  # the key stabiliser of each head
    )
    return {
        "NgramCorpus": corpus,
        "NgramModel": model,
        "AttentionDecoder": decoder,
        "CgmhNgram": _native.CgmhNgram(model, backward),
    }


CLASSES = sorted(
    name
    for name, obj in vars(_native).items()
    if isinstance(obj, type) and not issubclass(obj, BaseException)
)


@in_child
@pytest.mark.parametrize("name", CLASSES)
def test_no_panic_on_garbage_methods(name: str, tmp_path, monkeypatch) -> None:
    """Constructors and every public method of a valid instance, fed garbage."""
    monkeypatch.chdir(tmp_path)
    cls = getattr(_native, name)
    rng = random.Random(name)
    for k in range(7):
        feed_garbage(cls, rng, k, 40)
    instance = _instances()[name]
    for method in (m for m in dir(cls) if not m.startswith("_")):
        fn = getattr(instance, method)
        if callable(fn):
            for k in range(5):
                feed_garbage(fn, rng, k, 40)
    _native.set_num_threads(0)
