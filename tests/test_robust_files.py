"""Hostile model files: ARPA headers and bodies, special files, symlinked and rewritten models.

Every case must end in an ordinary exception naming the file (and the line, for ARPA), never
in an abort, a hang or a signal.
"""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import threading

import numpy as np
import pytest

from kexue import _native
from kexue.lm import NgramLM

LINES = ["the cat sat on the mat", "the dog sat on the log", "a cat saw a dog"] * 3

# A valid trigram ARPA file; tests replace one line of it.
ARPA = """\\data\\
ngram 1=5
ngram 2=3
ngram 3=1

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t-0.5
-0.5\t</s>\t0
-0.6\ta\t-0.3
-0.7\tb\t-0.2

\\2-grams:
-0.2\t<s> a\t-0.1
-0.3\ta b\t-0.1
-0.4\tb </s>

\\3-grams:
-0.1\t<s> a b

\\end\\
"""


def arpa_file(tmp_path, old: str | None = None, new: str = "") -> str:
    text = ARPA if old is None else ARPA.replace(old, new, 1)
    assert old is None or text != ARPA
    path = tmp_path / "m.arpa"
    path.write_text(text)
    return str(path)


def line_of(text: str) -> int:
    return ARPA.splitlines().index(text) + 1


def test_valid_file_loads(tmp_path) -> None:
    lm = NgramLM.load_arpa(arpa_file(tmp_path))
    assert lm.counts == [5, 3, 1]


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("count", [99999999999999, 2**63, 2**64 - 1, 10**6])
def test_huge_header_counts_are_refused_before_allocating(tmp_path, order, count) -> None:
    old = f"ngram {order}={[5, 3, 1][order - 1]}"
    path = arpa_file(tmp_path, old, f"ngram {order}={count}")
    with pytest.raises(ValueError, match=rf"line {line_of(old)}: ngram {order}={count} cannot"):
        NgramLM.load_arpa(path)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unparsable_header_counts_are_errors(tmp_path, order) -> None:
    old = f"ngram {order}={[5, 3, 1][order - 1]}"
    path = arpa_file(tmp_path, old, f"ngram {order}={2**64}")
    with pytest.raises(ValueError, match=f"line {line_of(old)}: expected"):
        NgramLM.load_arpa(path)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("ngram 1=5", "ngram 1=6"),  # more than the body holds
        ("ngram 2=3", "ngram 2=2"),  # fewer
        ("ngram 3=1", "ngram 3=2"),
    ],
)
def test_counts_disagreeing_with_the_body_name_a_line(tmp_path, old, new) -> None:
    with pytest.raises(ValueError, match=r"m\.arpa: line \d+: .*count"):
        NgramLM.load_arpa(arpa_file(tmp_path, old, new))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("-0.6\ta\t-0.3", "0.6\ta\t-0.3", "log10 probability 0.6 is positive"),
        ("-0.2\t<s> a\t-0.1", "0.2\t<s> a\t-0.1", "log10 probability 0.2 is positive"),
        ("-0.1\t<s> a b", "1e-3\t<s> a b", "log10 probability 1e-3 is positive"),
        ("-0.6\ta\t-0.3", "-0.6\ta\t0.3", "log10 back-off 0.3 is positive"),
        ("-0.3\ta b\t-0.1", "-0.3\ta b\t2", "log10 back-off 2 is positive"),
        ("-0.6\ta\t-0.3", "inf\ta\t-0.3", "log10 probability inf is positive"),
        ("-0.6\ta\t-0.3", "nan\ta\t-0.3", 'probability "nan" is not a number'),
        ("-0.6\ta\t-0.3", "-0.6\ta\t-inf", 'back-off "-inf" is not finite'),
        ("-0.3\ta b\t-0.1", "-0.3\ta b\tinf", 'back-off "inf" is not finite'),
    ],
)
def test_weights_are_validated_as_kenlm_does(tmp_path, old, new, message) -> None:
    with pytest.raises(ValueError, match=rf"line {line_of(old)}: {message}"):
        NgramLM.load_arpa(arpa_file(tmp_path, old, new))


def test_zero_probability_is_allowed(tmp_path) -> None:
    lm = NgramLM.load_arpa(arpa_file(tmp_path, "-99\t<s>", "-inf\t<s>"))
    assert np.isfinite(lm.logprob("a b"))


@pytest.fixture
def model_file(tmp_path) -> str:
    path = str(tmp_path / "m.kxlm")
    NgramLM.build(LINES, order=3, progress=False, discount_fallback=True).save(path)
    return path


def _fifo(tmp_path) -> str:
    path = str(tmp_path / "fifo")
    os.mkfifo(path)
    return path


def _no_hang(call, *args) -> BaseException:
    """Runs ``call(*args)`` in a thread; it must raise OSError within 10 s (a FIFO opened for
    reading would block until a writer comes)."""
    box: list[BaseException] = []

    def run() -> None:
        try:
            call(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            box.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # unblock it: a writer lets the open return
        with open(args[0], "wb"):
            pass
        pytest.fail(f"{call.__qualname__} blocked on a FIFO")
    assert box and isinstance(box[0], OSError), box
    return box[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("load", [NgramLM.load, NgramLM.load_arpa])
def test_fifo_is_refused_without_blocking(tmp_path, load) -> None:
    e = _no_hang(load, _fifo(tmp_path))
    assert "FIFO, not a regular file" in str(e)


@pytest.mark.parametrize("load", [NgramLM.load, NgramLM.load_arpa])
def test_directory_and_device_are_refused(tmp_path, load) -> None:
    with pytest.raises(OSError, match="directory, not a regular file"):
        load(str(tmp_path))
    if os.path.exists("/dev/null"):
        with pytest.raises(OSError, match="device or other special file"):
            load("/dev/null")


def test_save_through_a_symlink_replaces_its_target(tmp_path, model_file) -> None:
    lm = NgramLM.load(model_file, mmap=False)
    other = NgramLM.build(["x y z"] * 3, order=2, progress=False, discount_fallback=True)
    os.symlink("m.kxlm", tmp_path / "current.kxlm")
    link = str(tmp_path / "current.kxlm")
    for save in (other.save, other.save_arpa):
        save(link)
        assert os.path.islink(link) and os.readlink(link) == "m.kxlm"
        loader = NgramLM.load if save == other.save else NgramLM.load_arpa
        assert loader(model_file).vocab == other.vocab
        assert sorted(os.listdir(tmp_path)) == ["current.kxlm", "m.kxlm"]  # no temp left
    # A dangling link gets its target created.
    os.symlink("new.kxlm", tmp_path / "dangling")
    lm.save(str(tmp_path / "dangling"))
    assert NgramLM.load(str(tmp_path / "new.kxlm")).vocab == lm.vocab


def test_concurrent_saves_to_one_path_each_leave_a_whole_file(tmp_path) -> None:
    a = NgramLM.build(LINES, order=3, progress=False, discount_fallback=True)
    b = NgramLM.build(["x y z", "y z x"] * 40, order=2, progress=False, discount_fallback=True)
    path = str(tmp_path / "m.kxlm")
    errors: list[BaseException] = []

    def save(lm: NgramLM, arpa: bool) -> None:
        try:
            (lm.save_arpa if arpa else lm.save)(path)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    for round_ in range(10):
        arpa = round_ % 2 == 1
        threads = [threading.Thread(target=save, args=(m, arpa)) for m in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        loaded = (NgramLM.load_arpa if arpa else NgramLM.load)(path)
        assert loaded.vocab in (a.vocab, b.vocab)  # one writer's whole file, no mix
        assert os.listdir(tmp_path) == ["m.kxlm"]  # no temporary file left


def test_save_never_follows_a_link_planted_at_a_temporary_name(tmp_path) -> None:
    lm = NgramLM.build(LINES, order=2, progress=False, discount_fallback=True)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    # the names a fixed temp-name scheme would use (name + pid), and tempfile's pattern
    for name in (f".s.kxlm.tmp{os.getpid()}", ".s.kxlm.tmp"):
        os.symlink(victim, tmp_path / name)
    lm.save(str(tmp_path / "s.kxlm"))
    assert victim.read_text() == "keep me"
    assert not os.path.islink(tmp_path / "s.kxlm")
    assert NgramLM.load(str(tmp_path / "s.kxlm")).vocab == lm.vocab
    # as File::create would: readable by others unless the umask says otherwise
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "s.kxlm").st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("kind", ["dir", "fifo", "device"])
def test_save_refuses_non_regular_targets(tmp_path, kind) -> None:
    lm = NgramLM.build(LINES, order=2, progress=False, discount_fallback=True)
    if kind == "dir":
        target = str(tmp_path / "d")
        os.mkdir(target)
    elif kind == "fifo":
        target = _fifo(tmp_path)
    else:
        target = "/dev/null"
    link = tmp_path / "link"
    os.symlink(target, link)
    for path in (target, str(link)):
        for save in (lm.save, lm.save_arpa):
            with pytest.raises(OSError, match="not a regular file"):
                save(path)
    mode = os.stat(target).st_mode
    assert {"dir": stat.S_ISDIR, "fifo": stat.S_ISFIFO, "device": stat.S_ISCHR}[kind](mode)


@pytest.mark.parametrize("change", ["rewrite", "truncate", "append"])
def test_mapped_model_rewritten_in_place_is_an_error_not_sigbus(
    tmp_path, model_file, change
) -> None:
    """Strategy: a mapped model remembers its file's size and mtime and checks them (one
    fstat) at every call; a changed file gives OSError instead of a SIGBUS on the next read
    of a vanished page."""
    lm = NgramLM.load(model_file)  # mmap
    expected = lm.logprob(LINES[:2])
    other = str(tmp_path / "other.kxlm")
    NgramLM.build(["x y z w"] * 50, order=3, progress=False, discount_fallback=True).save(other)
    st = os.stat(model_file)
    if change == "rewrite":
        shutil.copyfile(other, model_file)  # `cp new loaded`: truncate, then write in place
    elif change == "truncate":
        os.truncate(model_file, 40)
    else:
        with open(model_file, "ab") as f:
            f.write(b"\0" * 8)
    os.utime(model_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    for call in (
        lambda: lm.logprob(LINES[:2]),
        lambda: lm.token_logprobs("the cat"),
        lambda: lm.next_logprobs("the"),
        lambda: lm.save(str(tmp_path / "copy.kxlm")),
        lambda: lm.save_arpa(str(tmp_path / "copy.arpa")),
        lambda: pickle.dumps(lm),
        lambda: _native.CgmhNgram(lm.native),
    ):
        with pytest.raises(OSError, match="rewritten or truncated since it was loaded"):
            call()
    if change == "rewrite":  # loading again reads the new file
        assert NgramLM.load(model_file).vocab == NgramLM.load(other).vocab
    else:
        with pytest.raises(ValueError, match="corrupt"):
            NgramLM.load(model_file)
    assert np.all(np.isfinite(expected))


def test_mapped_model_rewritten_during_a_call_is_refused(tmp_path, model_file) -> None:
    """The rule for a file rewritten while a call runs (documented at ``PyModel::checked``):
    the file is checked again when the call ends, and a result computed meanwhile is refused
    with OSError, never returned. The rewrite happens inside the call, from the similarity
    callback of a natively sampled paraphrase, and writes the same bytes, so the tables stay
    readable and only the check can tell. (A truncation during a call stays undefined, as for
    any reader of a memory map: replace files by rename, or load with ``mmap=False``.)"""
    from kexue.cgmh import paraphrase

    lm = NgramLM.load(model_file)  # mmap
    data = open(model_file, "rb").read()
    calls = []

    def similarity(text: str) -> list[float]:
        calls.append(text)
        if len(calls) == 2:  # the first call embeds the source, before the native run
            with open(model_file, "r+b") as f:
                f.write(data)
            st = os.stat(model_file)
            os.utime(model_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        return [1.0, float(len(text))]

    with pytest.raises(OSError, match="rewritten or truncated since it was loaded"):
        paraphrase("the cat sat on the mat", lm, similarity=similarity, steps=20, seed=0)
    assert len(calls) >= 2
    with pytest.raises(OSError, match="rewritten or truncated since it was loaded"):
        lm.logprob(LINES[:1])


def test_mapped_model_survives_replacement_by_rename(tmp_path, model_file) -> None:
    lm = NgramLM.load(model_file)
    before = lm.logprob(LINES)
    NgramLM.build(["x y z"] * 5, order=2, progress=False, discount_fallback=True).save(model_file)
    np.testing.assert_array_equal(lm.logprob(LINES), before)
    # Its file was replaced: it pickles by content, not by a reference to the new file.
    back = pickle.loads(pickle.dumps(lm))
    np.testing.assert_array_equal(back.logprob(LINES), before)


def test_loaded_model_pickles_after_its_file_is_deleted(tmp_path, model_file) -> None:
    lm = NgramLM.load(model_file, mmap=False)
    os.remove(model_file)
    back = pickle.loads(pickle.dumps(lm))
    np.testing.assert_array_equal(back.logprob(LINES), lm.logprob(LINES))


def test_unpickling_a_reference_to_a_changed_file_says_so(tmp_path, model_file) -> None:
    data = pickle.dumps(NgramLM.load(model_file))
    NgramLM.build(["x y z"] * 5, order=2, progress=False, discount_fallback=True).save(model_file)
    with pytest.raises(ValueError, match="changed since this model was loaded"):
        pickle.loads(data)
