"""A newcomer's first mistakes give one line saying what is wrong and what to do, with the README's exit codes
(2 = bad usage, 1 = an error), never a traceback."""

from __future__ import annotations

import csv
import os
import stat
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import write_marketcalls, write_wav

from extract.cli import main as extract_cli
from pipeline.datasets import load_manifest
from pipeline.device import DeviceError, check_device, resolve_device
from predict.cli import main as predict_cli
from predict.demo import main as demo_cli
from train.cli import main as train_cli
from train.sweep_cli import main as sweep_cli


def error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("Error")]


def commands(tmp_path: Path) -> dict:
    """Each command with the arguments it needs besides --device (nothing is read before the device check)."""
    return {
        "extract": (
            extract_cli,
            [
                "--dataset",
                "demo",
                "--data-dir",
                str(tmp_path / "d"),
                "--out",
                str(tmp_path / "c.zarr"),
            ],
        ),
        "demo": (
            demo_cli,
            [
                "--data-dir",
                str(tmp_path / "d"),
                "--cache",
                str(tmp_path / "c.zarr"),
                "--out",
                str(tmp_path / "runs"),
            ],
        ),
        "predict": (
            predict_cli,
            [
                "--run",
                str(tmp_path / "run"),
                "--audio",
                str(tmp_path / "a.wav"),
                "--transcripts",
                str(tmp_path / "t.csv"),
                "--out",
                str(tmp_path / "p.csv"),
            ],
        ),
        "train": (
            train_cli,
            ["--cache", str(tmp_path / "c.zarr"), "--out", str(tmp_path / "runs")],
        ),
        "sweep": (
            sweep_cli,
            [
                "--cache",
                str(tmp_path / "c.zarr"),
                "--grid",
                "paper-ablation",
                "--out",
                str(tmp_path / "sweep"),
            ],
        ),
    }


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine as one without CUDA (also on a GPU machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("name", ["extract", "demo", "predict", "train", "sweep"])
def test_cuda_without_cuda_and_unknown_devices_are_usage_errors(tmp_path, no_cuda, name):
    cli, args = commands(tmp_path)[name]
    r = CliRunner().invoke(cli, [*args, "--device", "cuda"])
    assert r.exit_code == 2, r.output
    (line,) = error_lines(r.output)
    assert "'cuda': CUDA is not available on this machine" in line and "use --device cpu" in line
    assert "Traceback" not in r.output and not isinstance(r.exception, AssertionError)
    r = CliRunner().invoke(cli, [*args, "--device", "gpu"])
    assert r.exit_code == 2, r.output
    (line,) = error_lines(r.output)
    assert "unknown device 'gpu'; use" in line and "cuda:N" in line
    assert not (tmp_path / "d").exists() and not (tmp_path / "c.zarr").exists(), (
        "nothing done before the check"
    )


def test_device_check_forms(monkeypatch):
    assert check_device("cpu") == "cpu" and check_device(" CPU ") == "cpu"
    assert check_device("auto") == "auto"
    with pytest.raises(DeviceError, match="unknown device 'auto'; use cpu, cuda or cuda:N"):
        check_device("auto", allow_auto=False)
    for bad in ("gpu", "cpu:0", "cuda:x", "", "cuda0"):
        with pytest.raises(DeviceError, match="unknown device"):
            check_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == "cuda:1"
    with pytest.raises(DeviceError, match="has 2 CUDA device"):
        check_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_train_device_from_a_config_file_is_checked_too(tmp_path, no_cuda):
    from train.config import TrainConfig
    from train.data import TrainError
    from train.loop import resolve_device as train_device

    with pytest.raises(TrainError, match="CUDA is not available"):
        train_device(TrainConfig(cache="x", device="cuda").device)


def test_a_missing_model_folder_is_refused_before_the_demo_data_is_generated(tmp_path):
    data, out = tmp_path / "demo-data", tmp_path / "c.zarr"
    for option in ("--audio-model", "--text-model"):
        r = CliRunner().invoke(
            extract_cli,
            [
                "--dataset",
                "demo",
                "--data-dir",
                str(data),
                "--out",
                str(out),
                option,
                "./no-such-model",
                "-q",
            ],
        )
        assert r.exit_code == 1, r.output
        (line,) = error_lines(r.output)
        assert f"{option} ./no-such-model: the folder does not exist" in line
        assert not data.exists() and not out.exists(), (
            "nothing may be generated or written before the check"
        )


def test_missing_model_folder_and_unreachable_hub_say_so_in_one_line(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    data = write_marketcalls(tmp_path / "mc", calls=3, segments=1)
    base = [
        "--dataset",
        "marketcalls",
        "--data-dir",
        str(data),
        "--out",
        str(tmp_path / "c.zarr"),
        "--num-workers",
        "0",
        "-q",
    ]
    r = CliRunner().invoke(extract_cli, [*base, "--audio-model", "./no-such-model"])
    assert r.exit_code == 1, r.output
    (line,) = error_lines(r.output)
    assert "--audio-model ./no-such-model: the folder does not exist" in line
    assert "alphanumeric" not in r.output and "disk space" not in r.output
    # a hub id with downloads off: one line, no retries, how to pass a local folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    r = CliRunner().invoke(extract_cli, [*base, "--audio-model", "msmtfn-tests/no-such-encoder"])
    assert r.exit_code == 1, r.output
    (line,) = error_lines(r.output)
    assert "not in the local Hugging Face cache and downloads are off (HF_HUB_OFFLINE=1)" in line
    assert "--local-dir DIR" in line and "pass --audio-model DIR" in line
    assert "Retrying" not in r.output and len([x for x in r.output.splitlines() if x.strip()]) == 1
    # no network (and not offline): one probe, no minute of retries
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    probes = []

    def no_network(url, timeout=None):
        probes.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    r = CliRunner().invoke(
        extract_cli,
        [
            *base,
            "--text-model",
            "msmtfn-tests/no-such-text-encoder",
            "--audio-model",
            str(tmp_path / "nope"),
        ],
    )
    (line,) = error_lines(r.output)
    assert r.exit_code == 1 and "--audio-model" in line and "does not exist" in line
    from extract.encoders import EncoderLoadError, EncoderSpec, TextEncoder

    with pytest.raises(
        EncoderLoadError, match="cannot be reached; download it where there is internet"
    ):
        TextEncoder(EncoderSpec("msmtfn-tests/no-such-text-encoder"))
    assert len(probes) == 1


def test_symlinked_audio_inside_the_dataset_is_accepted_named_paths_still_checked(tmp_path):
    elsewhere = tmp_path / "big-disk" / "audio"
    data = write_marketcalls(tmp_path / "mc", calls=3, segments=2)
    elsewhere.parent.mkdir(parents=True)
    (data / "audio").rename(elsewhere)
    (data / "audio").symlink_to(elsewhere, target_is_directory=True)  # audio/ kept on another disk
    m = load_manifest("marketcalls", data)
    assert len(m) == 6 and not m.issues
    # one file linked from outside, named by a plain relative path: accepted too
    outside = write_wav(tmp_path / "shared" / "x.wav", 1.0)
    (elsewhere / "13800000000_0.wav").unlink()
    (elsewhere / "13800000000_0.wav").symlink_to(outside)
    assert len(load_manifest("marketcalls", data)) == 6
    # what the CSV names is still checked: ../ out of the folder and absolute paths need --allow-outside-paths
    rows = [
        {"call_id": "c1", "audio": "audio/13800000001_0.wav", "label": "A"},
        {"call_id": "c2", "audio": "../shared/x.wav", "label": "B"},
        {"call_id": "c3", "audio": str(outside), "label": "C"},
        {"call_id": "c4", "audio": "audio/../audio/13800000002_0.wav", "label": "A"},
    ]
    with open(data / "calls.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["call_id", "audio", "label"])
        w.writeheader()
        w.writerows(rows)
    m = load_manifest("csv", data)
    reasons = {i.where: i.reason for i in m.issues}
    assert set(m.calls()) == {"c1", "c4"}
    assert "escapes the dataset directory" in reasons["calls.csv:3"]
    assert "absolute path" in reasons["calls.csv:4"]
    assert set(load_manifest("csv", data, allow_outside_paths=True).calls()) == {
        "c1",
        "c2",
        "c3",
        "c4",
    }


def test_wrong_dataset_and_task_are_usage_errors(tmp_path):
    r = CliRunner().invoke(extract_cli, ["--dataset", "marketcall", "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "'marketcall' is not one of 'marketcalls', 'csv'" in r.output, (
        r.output
    )
    r = CliRunner().invoke(train_cli, ["--cache", str(tmp_path / "c.zarr"), "--task", "6"])
    assert r.exit_code == 2, r.output
    (line,) = error_lines(r.output)
    assert "'6' is no dataset's task" in line and "marketcalls: 5, 4, 3, 2" in line


@pytest.mark.parametrize("cli,prog", [(extract_cli, "msmtfn-extract"), (sweep_cli, "msmtfn-sweep")])
def test_help_shows_the_command_as_typed(cli, prog):
    r = CliRunner().invoke(cli, ["--help"], prog_name=prog)
    assert r.exit_code == 0 and r.output.startswith(f"Usage: {prog} [OPTIONS]"), r.output[:200]
    r = CliRunner().invoke(cli, ["--nope"], prog_name=prog)
    assert (
        r.exit_code == 2
        and f"Try '{prog} --help' for help" in r.output
        and f"{prog} run" not in r.output
    )
    r = CliRunner().invoke(cli, ["run", "--help"], prog_name=prog)
    assert r.output.startswith(f"Usage: {prog} run [OPTIONS]")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_files_honour_the_umask(tmp_path, umask):
    from train.checkpoint import atomic_write_json, save_weights

    before = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "metrics.json", {"a": 1})
        save_weights(torch.nn.Linear(2, 2), tmp_path / "model.safetensors")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(before)
    want = 0o666 & ~umask
    for name in ("metrics.json", "model.safetensors", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name


def test_predict_transcripts_keep_rows_with_an_empty_end(tmp_path):
    from predict.transcripts import assign_text, read_transcript_csv

    path = tmp_path / "t.csv"
    path.write_text(
        "call_id,start,end,text\nc1,0,4,hello there\nc1,4,,and the rest\nc2,,,whole call\n"
        "c3,x,2,bad start\n",
        encoding="utf-8",
    )
    pieces = read_transcript_csv(path)
    assert set(pieces) == {"c1", "c2"}
    assert [p.text for p in pieces["c1"]] == ["hello there", "and the rest"]
    assert assign_text(pieces["c1"], [(0.0, 5.0), (5.0, 12.0)]) == ["hello there", "and the rest"]
    assert assign_text(pieces["c2"], [(0.0, 3.0)]) == ["whole call"]


@pytest.mark.parametrize(
    "line, key",
    [
        ('bigru = "false"', "bigru"),  # a true string: trained WITH the Bi-GRU before
        ('no-bigru = "false"', "bigru"),  # negated into False: trained WITHOUT it before
        ('epochs = "2"', "epochs"),
        ("epochs = 2.5", "epochs"),
        ('lr = "fast"', "lr"),
        ('dropout = "0.1"', "dropout"),
        ('loss-weights = "2=0.5"', "loss_weights"),
        ('loss-weights = { 2 = "half" }', "loss_weights"),
        ("patience = 0", "patience"),
        ("lr = -0.1", "lr"),
        ("warmup = -1", "warmup"),
        ("dropout = 1.0", "dropout"),
        ("bottleneck = 1", "bottleneck"),
    ],
)
def test_config_file_values_of_the_wrong_type_or_range_are_refused_in_one_line(tmp_path, line, key):
    cfg = tmp_path / "my-run.toml"
    cfg.write_text(f'cache = "{tmp_path / "c.zarr"}"\n{line}\n')
    out = tmp_path / "run"
    r = CliRunner().invoke(train_cli, ["--config", str(cfg), "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert f"{cfg}: {key}" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert "Traceback" not in r.output and not out.exists()


def test_config_values_of_the_right_type_still_pass():
    from train.config import TrainConfig

    c = TrainConfig.from_dict(
        {"cache": "c.zarr", "no-bigru": True, "lr": 1, "task": 5, "loss-weights": {"2": 0}}
    )
    assert c.bigru is False and c.lr == 1 and c.task == "5" and c.loss_weights == {"2": 0}


@pytest.mark.parametrize(
    "line, words", [('device = "gpu"', "unknown device 'gpu'"), ("task = 6", "no dataset's task")]
)
def test_a_device_or_task_in_a_config_file_is_checked_like_the_option(tmp_path, line, words):
    cfg = tmp_path / "my-run.toml"
    cfg.write_text(f'cache = "{tmp_path / "c.zarr"}"\n{line}\n')
    r = CliRunner().invoke(train_cli, ["--config", str(cfg)])
    assert r.exit_code == 2 and f"{cfg}: " in r.output and words in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def test_a_bad_value_is_blamed_on_where_it_was_written(tmp_path):
    cfg = tmp_path / "ok.toml"
    cfg.write_text(f'cache = "{tmp_path / "c.zarr"}"\n')
    r = CliRunner().invoke(train_cli, ["--config", str(cfg), "--patience", "0"])
    assert (
        r.exit_code == 2 and "the command line: patience" in r.output and str(cfg) not in r.output
    ), r.output
