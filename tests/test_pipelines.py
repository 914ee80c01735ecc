"""kexue in data pipelines: pickling, threads, fork, and the batch entry points (one process;
the real Dask/Ray engines are in test_pipelines_engines.py)."""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue.cgmh import generate
from kexue.lm import NgramLM
from kexue.pipelines import generate_batch, perplexity_batch, row_seeds
from kexue.vmf import VonMisesFisher

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")

TEXT = os.path.join(os.environ.get("KEXUE_DATA", "/work/shared/data"), "wikitext-2/test.txt")
KEYWORDS = ["city river", "war", "game music", "king", "first album", "team season", "film"]


def _lines(n: int) -> list[str]:
    with open(TEXT, encoding="utf-8") as f:
        return [line.strip() for line, _ in zip(f, range(n)) if line.strip()]


@pytest.fixture(scope="module")
def lm() -> NgramLM:
    return NgramLM.build(_lines(3000), order=3, progress=False)


@pytest.fixture(scope="module")
def lm_file(lm: NgramLM, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("lm") / "wiki.kxlm")
    lm.save(path)
    return path


def _frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame({"keywords": [KEYWORDS[i % len(KEYWORDS)] for i in range(rows)]})


# --- pickling ---------------------------------------------------------------------------------


def test_built_lm_pickles_by_bytes(lm: NgramLM) -> None:
    blob = pickle.dumps(lm)
    back = pickle.loads(blob)
    s = _lines(50)
    np.testing.assert_array_equal(back.logprob(s), lm.logprob(s))
    np.testing.assert_array_equal(back.reverse.logprob(s), lm.reverse.logprob(s))
    assert len(blob) > 10_000  # the tables travel


def test_loaded_lm_pickles_by_path_and_hash(lm: NgramLM, lm_file: str, tmp_path) -> None:
    loaded = NgramLM.load(lm_file, lowercase=True)
    blob = pickle.dumps(loaded)
    assert len(blob) < 1000 and lm_file.encode() in blob  # a reference, not the tables
    back = pickle.loads(blob)
    s = _lines(50)
    np.testing.assert_array_equal(back.logprob(s), lm.logprob([t.lower() for t in s]))
    assert back.lowercase and len(pickle.dumps(back)) == len(blob)  # re-pickles by path too

    copy = tmp_path / "copy.kxlm"
    copy.write_bytes(open(lm_file, "rb").read())
    blob = pickle.dumps(NgramLM.load(copy))
    NgramLM.build(["another text entirely"], order=2, progress=False, discount_fallback=True).save(
        copy
    )
    with pytest.raises(ValueError, match="changed"):
        pickle.loads(blob)


@pytest.mark.parametrize("mmap", [True, False])
def test_mapped_and_read_loads_agree(lm: NgramLM, lm_file: str, mmap: bool) -> None:
    loaded = NgramLM.load(lm_file, mmap=mmap)
    s = _lines(200)
    np.testing.assert_array_equal(loaded.logprob(s), lm.logprob(s))
    np.testing.assert_array_equal(loaded.reverse.logprob(s), lm.reverse.logprob(s))
    ctx = s[0].split()[:2]
    np.testing.assert_array_equal(loaded.next_logprobs(ctx), lm.next_logprobs(ctx))
    assert pickle.loads(pickle.dumps(loaded))._source == loaded._source  # keeps `mmap`


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="Linux only")
def test_processes_share_one_mapped_copy(lm_file: str) -> None:
    """What a Dask/Ray worker does on unpickling: load the file and build the CGMH scorer. With
    mmap the tables stay file-backed pages of the page cache, which every process mapping the
    file shares; only a small fraction of the file becomes anonymous (unshareable) memory.
    Read into memory, the whole file does."""
    code = textwrap.dedent(
        f"""
        import sys
        from kexue.lm import NgramLM
        from kexue.scorers import NgramScorer
        def anonymous():
            with open("/proc/self/smaps_rollup") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("Anonymous:")) * 1024
        before = anonymous()
        lm = NgramLM.load({lm_file!r}, mmap=sys.argv[1] == "1")
        scorer = NgramScorer(lm)
        lm.logprob(["touch the tables"] * 10)
        print(anonymous() - before)
        """
    )
    size = os.path.getsize(lm_file)
    grown = {
        mmap: int(subprocess.check_output([sys.executable, "-c", code, str(int(mmap))]))
        for mmap in (True, False)
    }
    assert grown[False] > 0.8 * size, grown
    assert grown[True] < 0.5 * size, grown


def test_vmf_and_cgmh_results_pickle(lm: NgramLM) -> None:
    v = VonMisesFisher(np.array([0.0, 0.6, 0.8]), 4.0, seed=3)
    w = pickle.loads(pickle.dumps(v))
    np.testing.assert_array_equal(w.sample(5), v.sample(5))  # seed stream state travels too
    x = v.sample(3, seed=1)
    np.testing.assert_array_equal(w.log_prob(x), v.log_prob(x))

    out = generate(["city"], lm, n=2, steps=30, seed=0, return_trace=True)
    back = pickle.loads(pickle.dumps(out))
    assert [s.text for s in back] == [s.text for s in out]
    assert back[0].acceptance_rate == out[0].acceptance_rate
    np.testing.assert_array_equal(back[1].trace_log_target, out[1].trace_log_target)


@pytest.mark.torch
def test_torch_modules_pickle() -> None:
    import torch

    from kexue import nn as knn

    torch.manual_seed(0)
    cases = [
        (knn.SquarePlus(2.0), (torch.randn(3, 4),)),
        (knn.LinearAttention(8, 2), (torch.randn(2, 5, 8),)),
        (knn.GlobalPointer(8, 2, 4), (torch.randn(2, 5, 8),)),
        (knn.MultilabelCategoricalCrossentropy(), (torch.randn(2, 5), torch.rand(2, 5).round())),
        (knn.UncertaintyWeighting(3), (torch.rand(3),)),
    ]
    for module, args in cases:
        back = pickle.loads(pickle.dumps(module))
        assert type(back) is type(module)
        for (k, a), (_, b) in zip(module.state_dict().items(), back.state_dict().items()):
            assert torch.equal(a, b), k
        torch.testing.assert_close(back(*args), module(*args))
    latent = pickle.loads(pickle.dumps(knn.VMFLatent(4, 10.0)))
    assert (latent.d, latent.kappa) == (4, 10.0)


# --- threads and fork -------------------------------------------------------------------------


def test_one_lm_shared_by_threads(lm: NgramLM) -> None:
    sentences = _lines(400)
    expected = lm.logprob(sentences)
    df = _frame(6)
    expected_gen = generate_batch(df, lm=lm, steps=25, seed=2, threads=1)
    results: dict[int, object] = {}

    def work(i: int) -> None:
        results[i] = (lm.logprob(sentences), generate_batch(df, lm=lm, steps=25, seed=2))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for scores, gen in results.values():
        np.testing.assert_array_equal(scores, expected)
        pd.testing.assert_frame_equal(gen, expected_gen)


def test_kernels_work_after_fork(lm_file: str) -> None:
    # The parent runs kernels (starting pool threads) before forking; a fork child inherits
    # the pool but not its threads, and must not wait on them.
    script = textwrap.dedent(f"""
        import os, kexue
        from kexue.lm import NgramLM
        lm = NgramLM.load({lm_file!r})
        s = ["the city", "a river in the north"] * 2000
        for n in (0, 2):
            kexue.set_num_threads(n)
            a = lm.logprob(s)
            pid = os.fork()
            if pid == 0:
                ok = (lm.logprob(s) == a).all()
                kexue.set_num_threads(0)
                ok = ok and (lm.logprob(s) == a).all()
                os._exit(0 if ok else 3)
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# --- generate_batch ---------------------------------------------------------------------------


@settings(max_examples=8, deadline=None)
@given(cuts=st.lists(st.integers(1, 13), max_size=3, unique=True))
def test_generate_batch_does_not_depend_on_partitioning(lm: NgramLM, cuts: list[int]) -> None:
    df = _frame(14)
    whole = generate_batch(df, lm=lm, steps=20, seed=5)
    bounds = [0, *sorted(cuts), len(df)]
    parts = [
        generate_batch(df.iloc[a:b], lm=lm, steps=20, seed=5, threads=1)
        for a, b in zip(bounds, bounds[1:])
    ]
    pd.testing.assert_frame_equal(pd.concat(parts), whole)


def test_generate_batch_rows_match_generate(lm: NgramLM) -> None:
    df = _frame(5).assign(seed=[11, 12, 13, 14, 15])
    out = generate_batch(df, lm=lm, seed_col="seed", steps=30, n=2, forms="exact")
    assert list(out["sample"]) == [0, 1] * 5 and list(out.index) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    for i, row in df.iterrows():
        ref = generate(
            row["keywords"].split(), lm, n=2, steps=30, seed=int(row["seed"]), forms="exact"
        )
        got = out.loc[i]
        assert list(got["text"]) == [s.text for s in ref]
        np.testing.assert_array_equal(got["logprob"], [s.logprob for s in ref])
        np.testing.assert_array_equal(got["acceptance_rate"], [s.acceptance_rate for s in ref])
        assert all(set(row["keywords"].split()) <= set(s.tokens) for s in ref)


def test_generate_batch_formats_agree(lm: NgramLM) -> None:
    df = _frame(6).assign(id=np.arange(100, 106))
    ref = generate_batch(df.set_index("id"), lm=lm, steps=20, seed=9)
    table = generate_batch(pa.Table.from_pandas(df), lm=lm, steps=20, seed=9, index_col="id")
    assert isinstance(table, pa.Table) and table.column("text").to_pylist() == list(ref["text"])
    batch = {"keywords": np.array([k.split() for k in df["keywords"]], dtype=object)}
    batch["id"] = df["id"].to_numpy()
    d = generate_batch(batch, lm=lm, steps=20, seed=9, index_col="id")
    assert list(d["text"]) == list(ref["text"]) and list(d["id"]) == list(df["id"])
    np.testing.assert_array_equal(d["logprob"], ref["logprob"].to_numpy())
    empty = generate_batch(df.iloc[:0], lm=lm, steps=20)
    assert len(empty) == 0 and "text" in empty.columns


def test_row_seeds() -> None:
    s = row_seeds(7, [0, 1, 2, 10**12])
    assert s.dtype == np.uint64 and len(set(s.tolist())) == 4
    np.testing.assert_array_equal(row_seeds(7, [2]), s[2:3])
    assert row_seeds(8, [0])[0] != s[0]


def test_generate_batch_bad_input(lm: NgramLM) -> None:
    df = _frame(3)
    with pytest.raises(TypeError, match="batch"):
        generate_batch([["cat"]], lm=lm)
    with pytest.raises(ValueError, match="keywords_col"):
        generate_batch(df, "words", lm=lm)
    with pytest.raises(ValueError, match="index"):
        generate_batch(df.set_index(pd.Index(["a", "b", "c"])), lm=lm, steps=5)
    with pytest.raises(ValueError, match="seed_col"):
        generate_batch(df.assign(s=[-1, 0, 1]), lm=lm, seed_col="s", steps=5)
    with pytest.raises(ValueError, match="row 1"):
        generate_batch(pd.DataFrame({"keywords": ["cat", ""]}), lm=lm, steps=5)
    with pytest.raises(TypeError, match="row 0"):
        generate_batch(pd.DataFrame({"keywords": [3]}), lm=lm, steps=5)
    with pytest.raises(ValueError, match="seed"):
        generate_batch(df, lm=lm, seed=-1)
    with pytest.raises(TypeError, match="lm"):
        generate_batch(df, lm=3.5)


# --- perplexity_batch -------------------------------------------------------------------------


def test_perplexity_batch_matches_kenlm(lm: NgramLM, tmp_path) -> None:
    kenlm = pytest.importorskip("kenlm")
    arpa = str(tmp_path / "lm.arpa")
    lm.save_arpa(arpa)
    ref = kenlm.Model(arpa)
    texts = _lines(300)[100:160] + ["zzzz unseen words", "the"]
    out = perplexity_batch(pd.DataFrame({"text": texts}), lm=lm)
    expected = [ref.perplexity(t) for t in texts]
    np.testing.assert_allclose(out["perplexity"], expected, rtol=1e-5)
    np.testing.assert_array_equal(out["tokens"], [len(t.split()) + 1 for t in texts])

    kept = perplexity_batch(pd.DataFrame({"text": texts}), lm=lm, max_perplexity=500.0)
    assert list(kept["text"]) == [t for t, p in zip(texts, expected) if p <= 500.0]
    assert 0 < len(kept) < len(texts)


def test_perplexity_batch_formats_and_paths(lm: NgramLM, lm_file: str) -> None:
    texts = _lines(80)
    ref = perplexity_batch({"text": np.array(texts, dtype=object)}, lm=lm)
    table = perplexity_batch(pa.table({"text": texts}), lm=lm_file, max_perplexity=math.inf)
    np.testing.assert_array_equal(table.column("perplexity").to_numpy(), ref["perplexity"])
    parts = [perplexity_batch({"text": texts[a : a + 7]}, lm=lm) for a in range(0, 80, 7)]
    np.testing.assert_array_equal(np.concatenate([p["logprob"] for p in parts]), ref["logprob"])
    with pytest.raises(TypeError, match="lm"):
        perplexity_batch({"text": texts}, lm=None)
    with pytest.raises(TypeError, match="row 1"):
        perplexity_batch({"text": ["a", 3]}, lm=lm)
    with pytest.raises(ValueError, match="equal lengths"):
        perplexity_batch({"text": ["a"], "x": [1, 2]}, lm=lm)
