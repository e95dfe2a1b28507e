"""The prediction CSV (``predictions_{valid,test}.csv``, ``msmtfn-predict --cache``) checked cell by cell
against hand-written rows: its columns, the coarser tasks a single 5-class head reports, the empty truth of an
unlabelled call, the segment-level layout, a regression's value; and the thread count scoring uses. Written
for the survivors of mutmut on train/predictions.py (docs/testing.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import write_synthetic_store

from train.config import effective_threads
from train.data import CallData, open_cache
from train.predictions import (
    Scored,
    _time,
    output_tasks,
    prediction_table,
    task_values,
    use_threads,
)

P0 = [0.1, 0.2, 0.3, 0.25, 0.15]  # C; summed: D+E of 4, B+C of 3, A+B+C of 2
P1 = [0.5, 0.1, 0.1, 0.1, 0.2]  # A everywhere


@pytest.fixture
def data(tmp_path):
    store = write_synthetic_store(tmp_path / "s.zarr", calls=3, segments_per_call=[2, 1, 3])
    return CallData(open_cache(str(store.path)), scoring=True)


def _scored(segments=None) -> Scored:
    truth = {
        "5": np.array([3, 0]),
        "4": np.array([3, 0]),
        "3": np.array([2, 0]),
        "2": np.array([1, 0]),
    }
    return Scored(
        outputs={"5": np.array([P0, P1])},
        truth=truth,
        labelled=np.array([True, False]),
        calls=np.array([0, 2]),
        segments=segments,
        loss=None,
    )


def _probs(values) -> str:
    return ",".join(f"{v:.6f}" for v in values)


TASK_HEAD = (
    "pred_5,p_5_A,p_5_B,p_5_C,p_5_D,p_5_E,pred_4,p_4_A,p_4_B,p_4_C,p_4_D+E,pred_3,p_3_A,p_3_B+C,p_3_D+E,"
    "pred_2,p_2_A+B+C,p_2_D+E,true_5,true_4,true_3,true_2"
)
ANSWERS = [
    f"C,{_probs(P0)},D+E,{_probs([0.1, 0.2, 0.3, 0.4])},B+C,{_probs([0.1, 0.5, 0.4])},A+B+C,"
    f"{_probs([0.6, 0.4])},D,D+E,D+E,D+E",
    f"A,{_probs(P1)},A,{_probs([0.5, 0.1, 0.1, 0.3])},A,{_probs([0.5, 0.2, 0.3])},A+B+C,"
    f"{_probs([0.7, 0.3])},,,,",  # unlabelled: no truth
]


def test_a_single_head_run_reports_the_coarser_tasks_by_summed_classes(data):
    tasks = output_tasks(data.scheme, {"5": 5})
    assert [(t["name"], t["classes"], t["kind"], t["level"]) for t in tasks] == [
        ("5", list("ABCDE"), "class", "call"),
        ("4", ["A", "B", "C", "D+E"], "class", "call"),
        ("3", ["A", "B+C", "D+E"], "class", "call"),
        ("2", ["A+B+C", "D+E"], "class", "call"),
    ]


def test_call_level_rows_cell_by_cell(data):
    text = prediction_table(_scored(), data, output_tasks(data.scheme, {"5": 5}))
    # the synthetic store keeps no segment lengths: duration_s is empty, not "nan"
    assert text.split("\n") == [
        "call_id,source,status,segments,duration_s," + TASK_HEAD,
        f"call00000,/synthetic/call00000_0.wav,ok,2,,{ANSWERS[0]}",
        f"call00002,/synthetic/call00002_0.wav,ok,3,,{ANSWERS[1]}",
        "",
    ]


def test_segment_level_rows_cell_by_cell(data):
    text = prediction_table(_scored(np.array([1, 0])), data, output_tasks(data.scheme, {"5": 5}))
    assert text.split("\n") == [
        "call_id,segment,start,end,status,text," + TASK_HEAD,
        f"call00000,1,,,ok,,{ANSWERS[0]}",
        f"call00002,0,,,ok,,{ANSWERS[1]}",
        "",
    ]


def test_no_scored_items_is_the_header_alone(data):
    empty = Scored({"5": np.zeros((0, 5))}, {}, np.zeros(0, bool), np.zeros(0, int), None, None)
    assert prediction_table(empty, data, output_tasks(data.scheme, {"5": 5})) == (
        "call_id,source,status,segments,duration_s," + TASK_HEAD + "\n"
    )


def test_task_values_of_a_regression_a_derived_label_and_a_missing_task():
    tasks = [
        {"name": "score", "classes": [], "kind": "regression"},
        {"name": "2", "classes": ["neg", "pos"], "kind": "class"},
        {"name": "7", "classes": list("abcdefg"), "kind": "class"},
    ]
    preds = {"score": {"value": 1.25}, "2": {"label": "pos"}}  # classes from the score: no probs
    assert task_values(tasks, preds) == ["1.250000", "pos", "", ""] + [""] * 8
    probs = {"2": {"label": "neg", "probs": {"neg": 0.75, "pos": 0.25}}}
    assert task_values(tasks[1:2], probs) == ["neg", "0.750000", "0.250000"]


def test_times_have_four_decimals_and_nan_is_empty():
    assert _time(1.23456) == "1.2346" and _time(0) == "0.0000" and _time(float("nan")) == ""


def test_scoring_threads():
    before = torch.get_num_threads()
    try:
        use_threads(1, "cpu")
        assert torch.get_num_threads() == 1
        torch.set_num_threads(effective_threads(0) + 1)
        use_threads(0, "cpu")  # training's default count on the CPU
        assert torch.get_num_threads() == effective_threads(0)
        use_threads(1, "cpu")
        use_threads(0, "cuda")  # a GPU run leaves torch's own count
        assert torch.get_num_threads() == 1
        use_threads(2, "cuda:0")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_scoring_a_cache_through_the_library_defaults(tmp_path):
    """score_cache_calls(run, cache) as a notebook calls it: the test split on the CPU, the run's batch
    size and thread count, its config beside the scores; the same table as every argument spelled out."""
    from test_run_predictions import SMALL

    from train.checkpoint import read_run_config
    from train.config import TrainConfig
    from train.loop import fit
    from train.predictions import score_cache_calls

    store = write_synthetic_store(
        tmp_path / "c.zarr", calls=24, seed=3, audio_frames=12, text_tokens=6
    )
    run = fit(
        TrainConfig(
            cache=str(store.path), out=str(tmp_path / "run"), **{**SMALL, "epochs": 1, "threads": 3}
        )
    )["run_dir"]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        got = score_cache_calls(run, str(store.path))
        # the run's own count (its numbers to the last digit), not the default of a run without one
        assert torch.get_num_threads() == 3 != effective_threads(0)
        spelled = score_cache_calls(run, str(store.path), "test", "cpu", 0, None, 3)
    finally:
        torch.set_num_threads(before)
    assert got.table() == spelled.table()
    test_calls = got.data.indices("test")
    assert len(test_calls) and sorted(got.scored.calls.tolist()) == sorted(test_calls)
    assert got.meta == read_run_config(run)
    assert got.table() == (Path(run) / "predictions_test.csv").read_text(encoding="utf-8")


def test_the_one_forward_call_runs_in_float32_without_amp():
    """model_outputs and its two halves under autocast only when asked (bf16 on CUDA): on the CPU
    without amp the outputs are the plain float32 forward pass, to the bit."""
    from types import SimpleNamespace

    from test_train_model import inputs, model_for

    from train.predictions import model_outputs, outputs_of_vectors, segment_vectors_of

    model = model_for()
    audio, alen, text, tlen, counts = inputs([2, 1, 3])
    batch = SimpleNamespace(
        audio=audio, audio_len=alen, text=text, text_len=tlen, seg_counts=counts
    )
    cpu = torch.device("cpu")
    with torch.no_grad():
        plain = model(audio, alen, text, tlen, counts)
        got = model_outputs(model, batch, cpu, amp=False)
        vectors = segment_vectors_of(model, batch, cpu, amp=False)
        halves = outputs_of_vectors(model, vectors, counts, cpu, amp=False)
        plain_vectors = model.segment_vectors(audio, alen, text, tlen)
    assert set(got) == set(plain) == set(halves)
    for k in plain:
        assert got[k].dtype == halves[k].dtype == torch.float32
        torch.testing.assert_close(got[k], plain[k], rtol=0, atol=0)
        torch.testing.assert_close(
            halves[k], model.outputs_of(plain_vectors, counts)[k], rtol=0, atol=0
        )
    torch.testing.assert_close(vectors, plain_vectors, rtol=0, atol=0)
