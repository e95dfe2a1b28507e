"""Guards that fail when training is broken in ways that still "run": the loss must sum every head, padding rows
must never reach the output, the call vector must read the Bi-GRU's last layer, and the reported scores must come
from the checkpoint that validation selected. bench/mutants.py breaks each of these on purpose (docs/testing.md)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from synthetic import write_synthetic_store
from torch.nn.utils.rnn import pack_padded_sequence

from train.checkpoint import load_run
from train.config import TrainConfig
from train.data import Batches, CallData, FeatureSource
from train.loop import _loss, evaluate, fit
from train.metrics import selection_score
from train.model import ModelDims, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(
    d_model=32,
    heads=4,
    ffn=64,
    gru_hidden=16,
    head_hidden=32,
    cross_layers=2,
    bottleneck_layers=2,
    dropout=0.1,
    progress=False,
    device="cpu",
    plots=False,
)
DIMS = ModelDims(audio_dim=16, text_dim=24, text_tokens=8, tasks={"5": 5, "4": 4, "3": 3, "2": 2})


def _model(**kw):
    torch.manual_seed(0)
    return build_model(TrainConfig(cache="unused", **{**SMALL, **kw}), DIMS).eval()


def test_loss_sums_every_head_with_its_weight():
    g = torch.Generator().manual_seed(0)
    logits = {t: torch.randn(6, k, generator=g) for t, k in DIMS.tasks.items()}
    labels = {t: torch.randint(0, k, (6,), generator=g) for t, k in DIMS.tasks.items()}
    weights = {"5": 1.0, "4": 0.5, "3": 2.0, "2": 1.5}
    expected = sum(w * F.cross_entropy(logits[t], labels[t]) for t, w in weights.items())
    torch.testing.assert_close(_loss(logits, labels, weights), expected)
    # each head's own term moves the total
    for t in DIMS.tasks:
        bumped = {**logits, t: logits[t] + 5 * F.one_hot(labels[t], DIMS.tasks[t])}
        assert (
            float(_loss(bumped, labels, weights)) < float(_loss(logits, labels, weights)) - 1e-3
        ), t


@pytest.mark.parametrize("pooling", ["mean", "cls", "flatten"])
@pytest.mark.parametrize("modality", ["both", "text", "audio"])
@pytest.mark.parametrize("audio_stride", [1, 3])
def test_padding_rows_never_change_the_output(pooling, modality, audio_stride):
    model = _model(pooling=pooling, modality=modality, audio_stride=audio_stride)
    g = torch.Generator().manual_seed(1)
    counts = torch.tensor([2, 3])
    s, frames = 5, 20
    audio, text = torch.randn(s, frames, 16, generator=g), torch.randn(s, 8, 24, generator=g)
    alen, tlen = torch.tensor([5, 20, 9, 14, 3]), torch.tensor([3, 8, 2, 5, 6])
    assert (alen < frames).any() and (tlen < 8).any(), "some rows must be padding"
    a2, t2 = audio.clone(), text.clone()
    for i in range(
        s
    ):  # garbage in every padding row, as a buggy writer or a shifted mask would leave
        a2[i, alen[i] :] = 100 * torch.randn(frames - alen[i], 16, generator=g)
        t2[i, tlen[i] :] = 100 * torch.randn(8 - tlen[i], 24, generator=g)
    with torch.no_grad():
        a, b = model(audio, alen, text, tlen, counts), model(a2, alen, t2, tlen, counts)
    for t in a:
        torch.testing.assert_close(a[t], b[t], rtol=1e-4, atol=1e-5)


def test_bigru_call_vector_reads_the_last_layers_final_states():
    model = _model()
    assert model.cfg.gru_layers == 2
    g = torch.Generator().manual_seed(2)
    counts = torch.tensor([3, 1, 2])
    seg = torch.randn(int(counts.sum()), model.d, generator=g)
    seen = []
    hook = model.call_proj.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].clone()) and None
    )
    with torch.no_grad():
        model.call_vectors(seg, counts)
        padded = torch.nn.utils.rnn.pad_sequence(
            list(torch.split(seg, counts.tolist())), batch_first=True
        )
        out, _ = model.gru(
            pack_padded_sequence(padded, counts, batch_first=True, enforce_sorted=False)
        )
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
    hook.remove()
    h = model.cfg.gru_hidden
    x = seen[0]
    for b, n in enumerate(counts.tolist()):
        # the last layer's forward direction after the call's last segment, its backward direction after the first
        torch.testing.assert_close(x[b, 2 * h : 3 * h], out[b, n - 1, :h])
        torch.testing.assert_close(x[b, 3 * h :], out[b, 0, h:])


def test_reported_scores_come_from_the_validation_selected_checkpoint(tmp_path):
    """Selection reads validation only, and the final val/test figures are the selected epoch's, not the last's."""
    store = write_synthetic_store(
        tmp_path / "c.zarr", calls=40, seed=5, audio_frames=12, text_tokens=6
    )
    m = fit(
        TrainConfig(
            cache=str(store.path),
            out=str(tmp_path / "r"),
            epochs=8,
            patience=8,
            lr=3e-3,
            seed=1,
            **SMALL,
        )
    )
    rows = list(csv.DictReader(open(Path(m["run_dir"]) / "history.csv")))
    assert m["best_epoch"] < m["epochs_run"], (
        "this setting must select an epoch before the last (else change seed)"
    )
    scores = [
        selection_score(
            {k: float(r[f"val_5_{k}"]) for k in ("accuracy", "macro_f1", "weighted_f1")},
            "macro_f1",
            float(r["val_loss"]),
        )
        for r in rows
    ]
    assert m["best_epoch"] == 1 + max(range(len(scores)), key=scores.__getitem__), (
        "first best validation epoch"
    )
    best = rows[m["best_epoch"] - 1]
    assert m["val_loss"] == pytest.approx(float(best["val_loss"]), rel=1e-6), (
        "history's validation is the val split"
    )
    assert m["val"]["5"]["macro_f1"] == pytest.approx(float(best["val_5_macro_f1"]), abs=1e-9)
    assert m["val"]["5"]["accuracy"] == pytest.approx(float(best["val_5_accuracy"]), abs=1e-9)
    # the test figures are what the saved checkpoint scores on the test split
    model, cfg = load_run(m["run_dir"])
    data = CallData(store)
    batches = Batches(
        data,
        FeatureSource(data, torch.device("cpu")),
        data.indices("test"),
        8,
        False,
        None,
        full_text=False,
    )
    weights = {t: 1.0 for t in model.heads}
    _, test, _ = evaluate(model, batches, data, weights, torch.device("cpu"), False)
    assert (
        test["5"]["accuracy"] == m["test"]["5"]["accuracy"]
        and test["5"]["confusion"] == m["test"]["5"]["confusion"]
    )
