"""PNG plots of a run's ``metrics.jsonl``: training loss and evaluation mIoU."""

from __future__ import annotations

import json
import os

__all__ = ["read_metrics", "plot_metrics"]


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a JSONL metrics log (a torn last line, from a killed run, is skipped)."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def plot_metrics(metrics_path: str | os.PathLike, out_dir: str | os.PathLike) -> list[str]:
    """Write ``loss.png`` (training loss per step, one line per stage) and, when the log has
    evaluations, ``miou.png`` into ``out_dir``. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    written = []
    for kind, key, ylabel, name in (
        ("train", "loss", "training loss", "loss.png"),
        ("eval", "miou", "held-out mIoU", "miou.png"),
    ):
        rows = [r for r in records if r.get("kind") == kind and key in r]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        stages = list(dict.fromkeys(r.get("stage", "") for r in rows))
        for stage in stages:
            pts = [(r["global_step"], r[key]) for r in rows if r.get("stage", "") == stage]
            ax.plot(*zip(*pts, strict=True), marker="o" if kind == "eval" else None,
                    label=stage or None)
        ax.set_xlabel("optimiser step (all stages)")
        ax.set_ylabel(ylabel)
        if kind == "train":
            ax.set_yscale("log")
        if len(stages) > 1:
            ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(os.fspath(out_dir), name)
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
