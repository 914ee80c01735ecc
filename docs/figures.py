"""The site's figures, computed from the installed package at build time (mkdocs-gen-files runs
this file; ``python docs/figures.py OUTDIR`` writes the same SVGs to a folder).

Every number drawn comes from a public kexue call made here, so a change in the package
(a fix, a new default) shows in the next build. Nothing is downloaded: the CGMH chain uses the
built-in English LM, and the benchmark ratios come from ``docs/benchmarks/*.json``, the output
of ``kexue bench NAME --json``.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DOCS = Path(__file__).resolve().parent
plt.rcParams.update({"figure.dpi": 100, "font.size": 9, "svg.hashsalt": "kexue"})


def favor_error() -> plt.Figure:
    """Relative error of causal linear attention against exact softmax attention: FAVOR+ as
    the number of random features m grows (6 projection seeds: median and range), with its
    default ``eps`` and with ``eps=0`` (the estimator alone), beside the deterministic elu+1
    map."""
    from kexue.attention import linear_attention, orthogonal_random_matrix, softmax_attention

    rng = np.random.default_rng(0)
    b, h, n, d = 1, 4, 256, 64
    q, k, v = (rng.standard_normal((b, h, n, d)) * s for s in (0.5, 0.5, 1.0))
    exact = softmax_attention(q, k, v, causal=True)

    def rel(o: np.ndarray) -> float:
        return float(np.linalg.norm(o - exact) / np.linalg.norm(exact))

    ms = [16, 32, 64, 128, 256, 512, 1024]
    runs = {"favor+ (default eps)": {}, "favor+, eps=0": {"eps": 0.0}}
    errors = {
        label: np.array(
            [
                [
                    rel(linear_attention(q, k, v, causal=True, **options,
                                         projection=orthogonal_random_matrix(m, d, seed=s)))
                    for s in range(6)
                ]
                for m in ms
            ]
        )
        for label, options in runs.items()
    }  # fmt: skip
    elu = rel(linear_attention(q, k, v, causal=True, feature_map="elu+1"))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for (label, e), style in zip(errors.items(), ("o-", "s:")):
        ax.fill_between(ms, e.min(1), e.max(1), color="C0", alpha=0.15, lw=0)
        ax.plot(ms, np.median(e, 1), style, color="C0", label=f"{label}: median, range of 6 Ω")
    ax.axhline(elu, ls="--", color="C3", label="elu+1 (no random features)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(ms, [str(m) for m in ms])
    ax.set_xlabel("random features m")
    ax.set_ylabel("‖o − softmax‖ / ‖softmax‖")
    ax.set_title(f"causal attention, N={n}, D={d}, q,k ~ N(0, 0.25 I), float64", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def vmf_sphere() -> plt.Figure:
    """1000 samples of vMF(μ, κ) on the unit sphere S² for three concentrations."""
    from kexue.vmf import sample_vmf

    mu = np.array([0.0, 0.0, 1.0])
    fig = plt.figure(figsize=(8.4, 3.0))
    u, w = np.meshgrid(np.linspace(0, 2 * np.pi, 40), np.linspace(0, np.pi, 20))
    for i, kappa in enumerate((1.0, 10.0, 100.0)):
        x = sample_vmf(mu, kappa, 1000, seed=i)
        ax = fig.add_subplot(1, 3, i + 1, projection="3d")
        ax.plot_wireframe(
            np.cos(u) * np.sin(w), np.sin(u) * np.sin(w), np.cos(w), color="0.85", lw=0.4
        )
        ax.scatter(x[:, 0], x[:, 1], x[:, 2], s=2, c=x[:, 2], cmap="viridis", vmin=-1, vmax=1)
        ax.quiver(0, 0, 1, 0, 0, 0.4, color="C3", lw=1.5)  # μ
        ax.set_title(f"κ = {kappa:g}   mean μᵀx = {float((x @ mu).mean()):.2f}", fontsize=9)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=18, azim=-60)
        ax.set_axis_off()
    fig.subplots_adjust(left=0, right=1, top=0.9, bottom=0, wspace=0)
    return fig


def cgmh_trace() -> plt.Figure:
    """Four CGMH chains for the keywords rain, city (built-in English LM, no annealing): the
    log target and the running acceptance rate per step, and one chain's sentence at a few
    steps. A chain of k steps is the first k steps of the same seed's longer chain (checked
    below), so the sentence at step k is the final sentence of a k-step run."""
    from kexue.cgmh import generate

    keywords, steps, seed = ["rain", "city"], 200, 0
    chains = generate(keywords, n=4, steps=steps, seed=seed, return_trace=True)
    marks = [1, 25, 80, steps]
    sentences = []
    for k in marks:
        head = generate(keywords, n=4, steps=k, seed=seed, return_trace=True)[0]
        assert np.array_equal(head.trace_log_target, chains[0].trace_log_target[:k]), (
            "a shorter chain is no longer a prefix of the longer one: label the steps otherwise"
        )
        sentences.append((k, head.text))
    fig, (a, b) = plt.subplots(
        2, 1, sharex=True, figsize=(7.2, 4.6), gridspec_kw={"height_ratios": [2.2, 1]}
    )
    steps_axis = np.arange(1, steps + 1)
    for i, s in enumerate(chains):
        lw, alpha = (1.6, 1.0) if i == 0 else (0.8, 0.5)
        a.plot(steps_axis, s.trace_log_target, lw=lw, alpha=alpha, label=f"chain {i}")
        acc = np.cumsum(np.asarray(s.trace_accepted, dtype=float)) / steps_axis
        b.plot(steps_axis, acc, lw=lw, alpha=alpha)
    for j, (k, _) in enumerate(sentences):
        y = chains[0].trace_log_target[k - 1]
        a.plot([k], [y], "o", color="C0", ms=11, mfc="white")
        a.text(k, y, str(j + 1), ha="center", va="center", fontsize=7, color="C0")
    listing = "\n".join(f"{j + 1}  step {k}: “{t}”" for j, (k, t) in enumerate(sentences))
    a.text(0.01, 0.03, listing, transform=a.transAxes, fontsize=7.5, va="bottom",
           bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})  # fmt: skip
    top = max(float(np.max(s.trace_log_target)) for s in chains)
    low = min(float(np.min(s.trace_log_target)) for s in chains)
    a.set_ylim(low - 0.5 * (top - low), top + 0.08 * (top - low))
    a.set_ylabel("log target (γ·log p + log λ)")
    a.set_title(f"CGMH, keywords {' + '.join(keywords)}, built-in English LM", fontsize=9)
    a.legend(fontsize=7, loc="upper right", ncol=4)
    b.set_ylabel("acceptance rate\n(running)")
    b.set_xlabel("MH step")
    b.set_ylim(0, 1)
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def bench_ratios(path: Path) -> plt.Figure:
    """Every ratio ours/peer of one ``kexue bench NAME --json`` file, case by case."""
    import textwrap

    report = json.loads(path.read_text())
    rows = []
    for case in report["cases"]:
        # the shape without its thread counts (the same for every case of a file)
        shape = ", ".join(p for p in case["shape"].split(", ") if "threads" not in p)
        for peer, ratio in case["ratios"].items():
            label = textwrap.fill(f"{case['case']} [{shape}] vs {peer}", 75)
            rows.append((label, ratio))
    if not rows:
        raise SystemExit(f"{path} holds no case with a peer")
    lines = sum(label.count("\n") + 1 for label, _ in rows)
    fig, ax = plt.subplots(figsize=(8.4, 0.16 * lines + 0.14 * len(rows) + 0.9))
    y = np.arange(len(rows))[::-1]
    ratios = np.array([r for _, r in rows])
    ax.barh(y, ratios, color=np.where(ratios < 1, "C0", "C3"), height=0.6)
    ax.set_yticks(y, [label for label, _ in rows], fontsize=7)
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("time ratio ours / peer (log scale; below 1, blue: kexue is faster)")
    ax.set_title(f"kexue bench {report['bench']} ({report['threads']} threads)", fontsize=9)
    for yi, r in zip(y, ratios):
        ax.text(r, yi, f" {r:.3g}", va="center", fontsize=7)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(right=max(2.0, ratios.max() * 3))
    ax.set_axisbelow(True)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def figures() -> dict[str, Callable[[], plt.Figure]]:
    """Name → figure maker, one bench chart per ``docs/benchmarks/*.json``."""
    made: dict[str, Callable[[], plt.Figure]] = {
        "favor_error": favor_error,
        "vmf_sphere": vmf_sphere,
        "cgmh_trace": cgmh_trace,
    }
    for path in sorted((DOCS / "benchmarks").glob("*.json")):
        made[f"bench_{path.stem}"] = lambda path=path: bench_ratios(path)
    return made


def svg(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    return buf.getvalue()


def main(out: Path | None) -> None:
    if out is not None:  # run by hand: python docs/figures.py OUTDIR
        out.mkdir(parents=True, exist_ok=True)
        for name, make in figures().items():
            (out / f"{name}.svg").write_bytes(svg(make()))
        return
    import mkdocs_gen_files

    for name, make in figures().items():
        with mkdocs_gen_files.open(f"figures/{name}.svg", "wb") as f:
            f.write(svg(make()))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python docs/figures.py OUTDIR")
    main(Path(sys.argv[1]))
elif __name__ == "<run_path>":  # mkdocs-gen-files
    main(None)
