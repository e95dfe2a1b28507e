"""What a search saves over a grid: the trial-epochs TPE with median pruning needs to reach the best
validation score of the full grid over the same values, on one generated cache, in one run.

The cache: calls whose 5-class label is a cue in the text features (so the learning rate and the
model's size matter); tiny model, CPU. The grid trains every combination for every epoch; the search
(train/search.py's sampler, pruner and per-epoch reports over the grid's values as choices) runs
trial after trial until one reaches the grid's best validation score, or 3× the grid's trials.

    python bench/search_efficiency.py            # ~5 min on 2 CPU cores
    python bench/search_efficiency.py --seeds 3  # the search repeated with sampler seeds 0..2

Prints the grid's trial-epochs, the search's, and their ratio; results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.synthetic import write_synthetic_store  # noqa: E402 (a test fixture)
from train.config import TrainConfig  # noqa: E402
from train.data import load_cache  # noqa: E402
from train.loop import TrainingRun  # noqa: E402
from train.search import make_pruner, make_sampler  # noqa: E402

GRID = {
    "lr": [1e-5, 1e-4, 1e-3, 3e-3],
    "dropout": [0.0, 0.3],
    "gru_hidden": [8, 16],
    "pooling": ["mean", "cls"],
}
BASE = dict(
    d_model=16,
    heads=2,
    ffn=32,
    head_hidden=16,
    cross_layers=1,
    bottleneck_layers=1,
    batch_calls=8,
    plots=False,
    progress=False,
    state_every=0,
    device="cpu",
    threads=1,
)


def cue(call, segment, audio, text):
    label = "ABCDE"[call % 5]
    text[: max(2, len(text) // 2), call % 5] += 1.5
    return label


def train(cache, loaded, out: Path, params: dict, epochs: int, trial=None) -> tuple[float, int]:
    """(the best validation score, epochs run); reports each epoch to ``trial`` (pruned: raises)."""
    import optuna

    cfg = TrainConfig(cache=str(cache), out=str(out), epochs=epochs, **BASE, **params)
    run = TrainingRun(cfg, loaded=loaded, score_test=False).start()
    for epoch in run.epochs():
        stop = run.epoch(epoch)
        if trial is not None:
            trial.report(run.last_score[0], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(len(run.history))
        if stop:
            break
    return run.best_score[0], len(run.history)


def main() -> int:
    import optuna

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=120)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = write_synthetic_store(
            tmp / "c.zarr", calls=args.calls, segments_per_call=(1, 3), label_fn=cue, seed=7
        )
        loaded = load_cache(str(store.path), __import__("torch").device("cpu"), 0.0)
        combos = [dict(zip(GRID, v)) for v in itertools.product(*GRID.values())]
        t0 = time.perf_counter()
        scores = []
        for i, params in enumerate(combos):
            scores.append(train(store.path, loaded, tmp / f"g{i}", params, args.epochs)[0])
        best = max(scores)
        grid_epochs = len(combos) * args.epochs
        print(
            f"grid: {len(combos)} trials × {args.epochs} epochs = {grid_epochs} trial-epochs, best "
            f"validation macro-F1 {best:.4f} ({time.perf_counter() - t0:.0f} s)"
        )
        ratios = []
        for seed in range(args.seeds):
            study = optuna.create_study(
                direction="maximize",
                sampler=make_sampler("tpe", seed),
                pruner=make_pruner("median", args.epochs),
            )
            used, reached, n = 0, None, 0
            while n < 3 * len(combos):
                trial = study.ask()
                params = {k: trial.suggest_categorical(k, v) for k, v in GRID.items()}
                try:
                    value, epochs = train(
                        store.path, loaded, tmp / f"s{seed}-{n}", params, args.epochs, trial
                    )
                    study.tell(trial, value)
                except optuna.TrialPruned as p:
                    value, epochs = -math.inf, int(p.args[0])
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                used += epochs
                n += 1
                if value >= best - 1e-12:
                    reached = n
                    break
            if reached is None:
                print(f"search seed {seed}: not reached in {n} trials ({used} trial-epochs)")
                continue
            pruned = sum(t.state.name == "PRUNED" for t in study.trials)
            ratios.append(grid_epochs / used)
            print(
                f"search seed {seed}: reached {best:.4f} at trial {reached} ({pruned} pruned), "
                f"{used} trial-epochs: the grid needs {grid_epochs / used:.2f}× as many"
            )
        if ratios:
            print(
                f"grid / search trial-epochs: {np.mean(ratios):.2f}× mean over {len(ratios)} of "
                f"{args.seeds} sampler seeds"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
