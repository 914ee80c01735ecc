"""kexue under the real engines, started as a user would: a Dask LocalCluster with 2 worker
processes and Ray with 2 CPUs. Distributed results must equal the single-process ones row for
row, and a Dask worker killed mid-job must change nothing."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from kexue import scorers
from kexue.lm import NgramLM
from kexue.pipelines import generate_batch, perplexity_batch

pd = pytest.importorskip("pandas")

TEXT = os.path.join(os.environ.get("KEXUE_DATA", "/work/shared/data"), "wikitext-2/test.txt")
KEYWORDS = ["city river", "war", "game music", "king", "first album", "team season", "film"]
OPTS = {"steps": 30, "seed": 4}


def _lines(n: int) -> list[str]:
    with open(TEXT, encoding="utf-8") as f:
        return [line.strip() for line, _ in zip(f, range(n)) if line.strip()]


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> NgramLM:
    path = tmp_path_factory.mktemp("lm") / "wiki.kxlm"
    NgramLM.build(_lines(3000), order=3, progress=False).save(path)
    return NgramLM.load(path)  # pickles by path + hash: cheap to ship


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rows = 120
    return pd.DataFrame(
        {"id": np.arange(rows), "keywords": [KEYWORDS[i % len(KEYWORDS)] for i in range(rows)]}
    )


@pytest.fixture(scope="module")
def expected(lm: NgramLM, frame: pd.DataFrame) -> pd.DataFrame:
    return generate_batch(frame, lm=lm, **OPTS)


def _worker_scorers() -> int:
    return len(scorers._SCORERS) + len(scorers._SCORERS_BY_FILE)


def test_dask_equals_single_process(lm, frame, expected) -> None:
    distributed = pytest.importorskip("distributed")
    dd = pytest.importorskip("dask.dataframe")
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        # futures API: the LM is broadcast once per worker
        lm_f = client.scatter(lm, broadcast=True)
        parts = [frame.iloc[a : a + 15] for a in range(0, len(frame), 15)]
        futures = [client.submit(generate_batch, p, lm=lm_f, threads=1, **OPTS) for p in parts]
        got = pd.concat(client.gather(futures))
        pd.testing.assert_frame_equal(got, expected)
        assert set(client.run(_worker_scorers).values()) == {1}  # one scorer per worker

        # dataframe API: map_partitions keeps the global index, so seeds follow the rows
        ddf = dd.from_pandas(frame, npartitions=5)
        got = ddf.map_partitions(generate_batch, lm=lm, threads=1, meta=expected.iloc[:0], **OPTS)
        # (dask.dataframe stores str columns as Arrow strings: values compared, not dtypes)
        pd.testing.assert_frame_equal(got.compute(), expected, check_dtype=False)
        assert set(client.run(_worker_scorers).values()) == {1}

        texts = pd.DataFrame({"text": _lines(400)})
        ref = perplexity_batch(texts, lm=lm, max_perplexity=800.0)
        got = dd.from_pandas(texts, npartitions=4).map_partitions(
            perplexity_batch, lm=lm, max_perplexity=800.0, meta=ref.iloc[:0]
        )
        pd.testing.assert_frame_equal(got.compute(), ref, check_dtype=False)


def test_dask_worker_killed_mid_job(lm, frame, expected) -> None:
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        parts = [frame.iloc[a : a + 10] for a in range(0, len(frame), 10)]
        opts = {**OPTS, "steps": 150}  # long enough for the kill to land mid-job
        futures = [client.submit(generate_batch, p, lm=lm, threads=1, **opts) for p in parts]
        next(distributed.as_completed(futures))
        busy = [w for w, tasks in client.processing().items() if tasks]
        assert busy, "every task finished before the kill"
        pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
        os.kill(pid, signal.SIGKILL)  # the nanny restarts it; the scheduler reruns its tasks
        got = pd.concat(client.gather(futures))
        assert sum(f.done() for f in futures) == len(futures)
        # The scheduler marks a task "suspicious" when the worker running it dies: proof that
        # the kill landed mid-task and that task was rerun elsewhere.
        rerun = client.run_on_scheduler(
            lambda dask_scheduler: sum(ts.suspicious for ts in dask_scheduler.tasks.values())
        )
        assert rerun >= 1, "the killed worker was running no task"
    pd.testing.assert_frame_equal(got, generate_batch(frame, lm=lm, **opts))


def test_ray_equals_single_process(lm, frame, expected) -> None:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.from_pandas(frame.copy()).repartition(4)
        got = (
            ds.map_batches(
                generate_batch,
                batch_format="pandas",
                batch_size=16,
                fn_kwargs={"lm": lm, "index_col": "id", "threads": 1, **OPTS},
            )
            .to_pandas()
            .sort_values("id")
            .reset_index(drop=True)
        )
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)

        texts = {"text": np.array(_lines(400), dtype=object)}
        ref = perplexity_batch(texts, lm=lm)
        out = ray.data.from_numpy(texts["text"]).map_batches(
            lambda b: perplexity_batch({"text": b["data"]}, lm=lm), batch_size=50
        )
        got = out.to_pandas()
        np.testing.assert_array_equal(np.sort(got["perplexity"]), np.sort(ref["perplexity"]))
    finally:
        ray.shutdown()
