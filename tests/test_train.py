"""Stage 2 on CPU: audio really reaches the output, ablations do what they claim, one label map, the fused model
needs both modalities, the Bi-GRU reads segment order, and the run folder / CLI / refusals behave."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.labels import MARKETCALLS
from pipeline.store import CacheStore
from pipeline.synthetic import SyntheticCall, write_synthetic_store
from train.checkpoint import CheckpointError, load_run
from train.cli import main as train_cli
from train.config import ConfigError, TrainConfig
from train.data import CallData, TrainError
from train.loop import fit
from train.model import ModelDims, build_model

SMALL = dict(d_model=32, heads=4, ffn=64, gru_hidden=16, head_hidden=32, cross_layers=2, bottleneck_layers=2,
             dropout=0.1, progress=False, device="cpu")
DIMS = ModelDims(audio_dim=16, text_dim=24, text_tokens=8, tasks={"5": 5, "4": 4, "3": 3, "2": 2})


def small(cache="unused", **kw) -> TrainConfig:
    return TrainConfig(cache=str(cache), **{**SMALL, **kw})


def inputs(counts: list[int], seed: int = 0, frames: int = 20):
    g = torch.Generator().manual_seed(seed)
    s = sum(counts)
    audio = torch.randn(s, frames, DIMS.audio_dim, generator=g)
    text = torch.randn(s, DIMS.text_tokens, DIMS.text_dim, generator=g)
    alen = torch.randint(frames // 2, frames + 1, (s,), generator=g)
    tlen = torch.randint(3, DIMS.text_tokens + 1, (s,), generator=g)
    return audio, alen, text, tlen, torch.tensor(counts)


def model_for(**kw):
    torch.manual_seed(0)
    return build_model(small(**kw), DIMS).eval()


# ---------------------------------------------------------- audio matters
@pytest.mark.parametrize("variant", [{}, {"cross_attention": False}, {"bottleneck": False},
                                     {"pooling": "cls"}, {"bigru": False}])
def test_audio_reaches_the_output(variant):
    model = model_for(**variant)
    audio, alen, text, tlen, counts = inputs([2, 3, 1])
    audio.requires_grad_(True)
    logits = model(audio, alen, text, tlen, counts)
    sum(v.sum() for v in logits.values()).backward()
    assert audio.grad is not None and audio.grad.abs().sum() > 0, "gradient to audio must be non-zero"
    with torch.no_grad():
        before = model(audio, alen, text, tlen, counts)
        swapped = audio.detach().clone()
        swapped[:2] = torch.randn_like(swapped[:2])          # call 0's two segments get other audio
        after = model(swapped, alen, text, tlen, counts)
    for t in before:
        assert (before[t][0] - after[t][0]).abs().max() > 1e-4, "swapping a call's audio must change its logits"
        torch.testing.assert_close(before[t][1:], after[t][1:], rtol=1e-5, atol=1e-6)  # other calls untouched


def test_text_only_ignores_audio_and_audio_only_ignores_text():
    model = model_for(modality="text")
    audio, alen, text, tlen, counts = inputs([2, 3])
    with torch.no_grad():
        a = model(audio, alen, text, tlen, counts)
        b = model(torch.randn_like(audio), alen, text, tlen, counts)
        c = model(audio, alen, torch.randn_like(text), tlen, counts)
    for t in a:
        assert torch.equal(a[t], b[t]), "text-only: audio must change nothing"
        assert not torch.equal(a[t], c[t])
    model = model_for(modality="audio")
    with torch.no_grad():
        a = model(audio, alen, text, tlen, counts)
        b = model(audio, alen, torch.randn_like(text), tlen, counts)
        c = model(torch.randn_like(audio), alen, text, tlen, counts)
    for t in a:
        assert torch.equal(a[t], b[t]) and not torch.equal(a[t], c[t])


# -------------------------------------------------------------- ablations
def _names(model) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def test_ablation_flags_change_the_architecture_as_claimed():
    full = _names(model_for())
    assert any(".cross." in n for n in full) and "bottleneck_tokens" in full and any(n.startswith("gru.") for n in full)
    no_x = _names(model_for(cross_attention=False))
    assert not any(".cross." in n for n in no_x) and any(n.startswith("cross_layers.0.block") for n in no_x)
    assert not any("bottleneck" in n for n in _names(model_for(bottleneck=False)))
    assert not any(n.startswith("gru.") for n in _names(model_for(bigru=False)))
    assert set(model_for(mtl=False, task="3").heads) == {"3"} and set(model_for().heads) == {"5", "4", "3", "2"}
    text_only = _names(model_for(modality="text"))
    assert not any("audio" in n for n in text_only) and not any(".cross." in n for n in text_only)
    audio_only = _names(model_for(modality="audio"))
    assert not any("text" in n for n in audio_only)
    assert "flatten.weight" in full and "flatten.weight" not in _names(model_for(pooling="cls"))
    with pytest.raises(ConfigError, match="nothing fuses audio"):
        model_for(cross_attention=False, bottleneck=False)


def test_cross_layers_are_chained():
    """Each cross-modal layer takes the previous one's output: removing layer 0's effect changes layer 1's input."""
    model = model_for()
    audio, alen, text, tlen, counts = inputs([2])
    seen = []
    hook = model.cross_layers[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    with torch.no_grad():
        model(audio, alen, text, tlen, counts)
        for p in model.cross_layers[0].parameters():
            p.mul_(0.0)   # layer 0 becomes the identity (residual only)
        model(audio, alen, text, tlen, counts)
    hook.remove()
    assert not torch.allclose(seen[0], seen[1])


def test_without_bigru_segment_order_does_not_matter_with_it_does():
    audio, alen, text, tlen, counts = inputs([4])
    perm = torch.tensor([2, 0, 3, 1])
    for bigru, same in ((False, True), (True, False)):
        model = model_for(bigru=bigru)
        with torch.no_grad():
            a = model(audio, alen, text, tlen, counts)["5"]
            b = model(audio[perm], alen[perm], text[perm], tlen[perm], counts)["5"]
        assert torch.allclose(a, b, atol=1e-5) == same


def test_calls_of_1_and_40_segments_in_one_batch_equal_each_call_alone():
    model = model_for()
    audio, alen, text, tlen, counts = inputs([1, 40, 3], frames=24)
    with torch.no_grad():
        together = model(audio, alen, text, tlen, counts)
        start = 0
        for c, n in enumerate(counts.tolist()):
            sl = slice(start, start + n)
            # alone: rows cut to this call's own longest segment, as a batch of one call would be
            a_max = int(alen[sl].max())
            alone = model(audio[sl, :a_max], alen[sl], text[sl], tlen[sl], torch.tensor([n]))
            for t in together:
                torch.testing.assert_close(together[t][c], alone[t][0], rtol=1e-4, atol=1e-5)
            start += n


# ------------------------------------------------------------- label maps
def test_every_task_label_derives_from_a_to_e():
    expected = {"5": {"A": 0, "B": 1, "C": 2, "D": 3, "E": 4}, "4": {"A": 0, "B": 1, "C": 2, "D": 3, "E": 3},
                "3": {"A": 0, "B": 1, "C": 1, "D": 2, "E": 2}, "2": {"A": 0, "B": 0, "C": 0, "D": 1, "E": 1}}
    for task, mapping in expected.items():
        assert MARKETCALLS.encode(list(mapping), task).tolist() == list(mapping.values())
    assert MARKETCALLS.class_map("5", "2").tolist() == [0, 0, 0, 1, 1]
    assert MARKETCALLS.class_map("3", "4") is None   # B+C cannot be split back


def test_training_labels_come_from_the_same_maps(tmp_path):
    store = write_synthetic_store(tmp_path / "c.zarr", n_calls=30, seed=1)
    data = CallData(store)
    for task in ("5", "4", "3", "2"):
        assert data.labels[task].tolist() == MARKETCALLS.encode(data.base_labels, task).tolist()
    assert set(data.base_labels) <= set("ABCDE")


# ------------------------------------------------ learning what it should
def _xor_call(rng, index, n, shape):
    t_cue, a_cue = int(rng.integers(0, 2)), int(rng.integers(0, 2))
    call = SyntheticCall(label="", audio=rng.standard_normal((n, shape.audio_frames, shape.audio_dim)),
                         audio_len=rng.integers(shape.audio_frames // 2, shape.audio_frames + 1, n),
                         text=rng.standard_normal((n, shape.text_tokens, shape.text_dim)),
                         text_len=rng.integers(3, shape.text_tokens + 1, n))
    call.text[:, :, :4] += 1.5 * (2 * t_cue - 1)
    call.audio[:, :, :4] += 1.5 * (2 * a_cue - 1)
    call.label = str(rng.choice(list("ABC"))) if t_cue ^ a_cue else str(rng.choice(list("DE")))
    return call


def test_fused_model_beats_each_modality_when_the_label_needs_both(tmp_path):
    store = write_synthetic_store(tmp_path / "xor.zarr", n_calls=200, segments=(1, 3), audio_frames=16,
                                  audio_dim=16, text_tokens=8, text_dim=16, seed=3, fill=_xor_call)
    acc = {}
    for modality in ("both", "text", "audio"):
        m = fit(small(store.path, out=str(tmp_path / modality), modality=modality, task="2", mtl=False, lr=2e-3,
                      epochs=15, patience=15, batch_calls=16, pooling="cls", dropout=0.0))
        acc[modality] = m["test"]["2"]["accuracy"]
    assert acc["both"] >= 0.85, acc
    assert acc["text"] <= 0.70 and acc["audio"] <= 0.70, acc


def _order_call(rng, index, n, shape):
    call = SyntheticCall(label="", audio=rng.standard_normal((n, shape.audio_frames, shape.audio_dim)),
                         audio_len=np.full(n, shape.audio_frames), text=rng.standard_normal((n, shape.text_tokens, shape.text_dim)),
                         text_len=np.full(n, shape.text_tokens))
    x, y = rng.choice(n, size=2, replace=False)
    call.text[x, :, :4] += 2.0      # marker X
    call.text[y, :, 4:8] += 2.0     # marker Y
    call.label = "A" if x < y else "E"     # 2-class: X before Y or not
    return call


def test_bigru_beats_no_bigru_when_the_label_depends_on_segment_order(tmp_path):
    store = write_synthetic_store(tmp_path / "order.zarr", n_calls=160, segments=(2, 4), audio_frames=8,
                                  audio_dim=16, text_tokens=6, text_dim=16, seed=4, fill=_order_call)
    acc = {}
    for bigru in (True, False):
        m = fit(small(store.path, out=str(tmp_path / str(bigru)), bigru=bigru, task="2", mtl=False, lr=2e-3,
                      epochs=15, patience=15, batch_calls=16, pooling="cls", dropout=0.0))
        acc[bigru] = m["test"]["2"]["accuracy"]
    assert acc[True] >= 0.85 and acc[False] <= 0.70, acc


# ------------------------------------------------- loop, files, refusals
def test_run_folder_cli_and_config_file(tmp_path):
    write_synthetic_store(tmp_path / "c.zarr", n_calls=40, seed=5)
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'cache = "{tmp_path / "c.zarr"}"\nepochs = 3\nd-model = 32\nheads = 4\nffn = 64\n'
                   'gru_hidden = 8\nno-bigru = true\nlr = 0.001\n')
    out = tmp_path / "run"
    r = CliRunner().invoke(train_cli, ["--config", str(cfg), "--epochs", "2", "--out", str(out), "-q",
                                       "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "5-class" in r.output and "2-class" in r.output and "test acc" in r.output
    for f in ("config.json", "model.safetensors", "metrics.json", "history.csv", "plots/learning_curves.png",
              "plots/confusion_valid.png", "plots/confusion_test.png"):
        assert (out / f).is_file(), f
    conf = json.loads((out / "config.json").read_text())
    assert conf["train"]["epochs"] == 2, "the command line wins over the file"
    assert conf["train"]["bigru"] is False and conf["train"]["d_model"] == 32, "file keys apply"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["val"]) == set(metrics["test"]) == {"5", "4", "3", "2"}
    assert len((out / "history.csv").read_text().strip().splitlines()) == 1 + metrics["epochs_run"]
    bad = tmp_path / "bad.toml"
    bad.write_text('cache = "x"\nlearning_rate = 1\n')
    r = CliRunner().invoke(train_cli, ["--config", str(bad)])
    assert r.exit_code == 1 and "unknown key 'learning_rate'" in r.output and "lr" in r.output


def test_seeds_repeat_on_cpu(tmp_path):
    write_synthetic_store(tmp_path / "c.zarr", n_calls=30, seed=6)
    runs = [fit(small(tmp_path / "c.zarr", out=str(tmp_path / f"r{i}"), epochs=3, seed=s, lr=1e-3))
            for i, s in enumerate((7, 7, 8))]
    import csv

    def history(run):  # everything but the wall-clock column
        rows = list(csv.DictReader(open(Path(run["run_dir"]) / "history.csv")))
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert history(runs[0]) == history(runs[1]) and runs[0]["test"] == runs[1]["test"]
    assert history(runs[0]) != history(runs[2])


def test_early_stopping_and_best_checkpoint(tmp_path):
    write_synthetic_store(tmp_path / "c.zarr", n_calls=30, seed=7)
    m = fit(small(tmp_path / "c.zarr", out=str(tmp_path / "r"), epochs=20, patience=2, lr=0.0))
    assert m["best_epoch"] == 1 and m["epochs_run"] == 3
    model, cfg, meta = load_run(m["run_dir"])
    assert cfg.patience == 2 and meta["cache"]["fingerprint"] == CacheStore.open(tmp_path / "c.zarr").fingerprint
    (Path(m["run_dir"]) / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_run(m["run_dir"])


def test_streamed_features_train_like_resident_ones(tmp_path):
    write_synthetic_store(tmp_path / "c.zarr", n_calls=30, seed=8)
    a = fit(small(tmp_path / "c.zarr", out=str(tmp_path / "a"), epochs=2, lr=1e-3))
    b = fit(small(tmp_path / "c.zarr", out=str(tmp_path / "b"), epochs=2, lr=1e-3, max_cache_gb=1e-9))
    assert a["val"] == b["val"] and a["test"] == b["test"]


def test_incomplete_or_unknown_caches_are_refused(tmp_path):
    store = write_synthetic_store(tmp_path / "c.zarr", n_calls=20, seed=9)
    s = CacheStore.open(store.path, mode="r+")
    done = s.done()
    done[[1, 5, 9]] = False
    s.set_flags(0, s.n, done, np.zeros(s.n, bool))
    with pytest.raises(TrainError, match=r"3 of \d+ segments are not extracted yet.*msmtfn-extract"):
        fit(small(store.path, epochs=1))
    s.group.attrs["schema_version"] = 99
    r = CliRunner().invoke(train_cli, ["--cache", str(store.path), "-q"])
    assert r.exit_code == 1 and "newer than this msmtfn understands" in r.output


def test_skipped_segments_are_left_out_and_empty_calls_dropped(tmp_path, caplog):
    store = write_synthetic_store(tmp_path / "c.zarr", n_calls=20, segments=[2] * 20, seed=10)
    s = CacheStore.open(store.path, mode="r+")
    done, skipped = s.done(), s.skipped()
    done[[0, 1, 2]], skipped[[0, 1, 2]] = False, True      # call 0 loses both segments, call 1 one of two
    s.set_flags(0, s.n, done, skipped)
    data = CallData(s)
    assert "call00000" not in data.calls
    assert len(data.rows[data.calls.index("call00001")]) == 1
    assert "no usable segment" in caplog.text
