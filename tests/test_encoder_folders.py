"""`--audio-model DIR` / `--text-model DIR` that is not a model folder (empty, a zip not unpacked, the model one
level down, no tokenizer) is one line naming the folder, what is missing and the fix; and missing paths are
answered before torch or transformers is imported (extract/paths.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_marketcalls

from extract.cli import main as extract_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_marketcalls(tmp_path_factory.mktemp("folders") / "mc", calls=3, segments=1)


def _run(data: Path, tiny_encoders, tmp_path: Path, option: str, value: str):
    models = {
        "--audio-model": str(tiny_encoders["group"]),
        "--text-model": str(tiny_encoders["text"]),
        option: value,
    }
    r = CliRunner().invoke(
        extract_cli,
        [
            "--dataset",
            "marketcalls",
            "--data-dir",
            str(data),
            "--out",
            str(tmp_path / "c.zarr"),
            "--loader-workers",
            "0",
            "-q",
            *(x for kv in models.items() for x in kv),
        ],
    )
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert (
        r.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"Error: {option} {value}: ")
    ), r.output
    assert not (tmp_path / "c.zarr").exists(), "refused before any work"
    return lines[0]


@pytest.mark.parametrize("option", ["--audio-model", "--text-model"])
def test_a_folder_holding_a_zip_says_unzip_it(data, tiny_encoders, tmp_path, option):
    folder = tmp_path / "downloaded"
    folder.mkdir()
    (folder / "chinese-roberta.zip").write_bytes(b"PK\x03\x04")
    line = _run(data, tiny_encoders, tmp_path, option, str(folder))
    assert (
        "no config.json" in line and f"unzip {folder / 'chinese-roberta.zip'} -d {folder}" in line
    )


@pytest.mark.parametrize("option", ["--audio-model", "--text-model"])
def test_the_zip_itself_is_a_file_not_a_folder(data, tiny_encoders, tmp_path, option):
    z = tmp_path / "model.zip"
    z.write_bytes(b"PK\x03\x04")
    line = _run(data, tiny_encoders, tmp_path, option, str(z))
    assert "a file, not a model folder" in line and "unzip" in line


def test_an_empty_folder_and_a_folder_one_level_up(data, tiny_encoders, tmp_path):
    (tmp_path / "empty").mkdir()
    line = _run(data, tiny_encoders, tmp_path, "--text-model", str(tmp_path / "empty"))
    assert "no config.json" in line and "empty" in line and "save_pretrained" in line
    up = tmp_path / "models"
    shutil.copytree(tiny_encoders["text"], up / "text-tiny")
    line = _run(data, tiny_encoders, tmp_path, "--text-model", str(up))
    assert f"one level down: pass --text-model {up / 'text-tiny'}" in line


def test_a_model_folder_without_its_tokenizer_or_feature_extractor(data, tiny_encoders, tmp_path):
    # the audio model's folder as the text model: config.json and weights, no tokenizer (transformers would print
    # five lines about sentencepiece)
    line = _run(data, tiny_encoders, tmp_path, "--text-model", str(tiny_encoders["group"]))
    assert "no tokenizer" in line and "tokenizer.save_pretrained" in line
    line = _run(data, tiny_encoders, tmp_path, "--audio-model", str(tiny_encoders["text"]))
    assert "no preprocessor_config.json" in line


# ------------------------------------------------------------------ answered before the heavy imports
HEAVY = ("torch", "transformers")


def _light_call(args: list[str]) -> tuple[int, list[str], str]:
    code = (
        "import sys\nfrom extract.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as e:\n    code = e.code\n"
        f"print('LOADED', ','.join(m for m in {HEAVY!r} if m in sys.modules), code)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    loaded = out.stdout.strip().splitlines()[-1].split(" ")
    return (
        int(loaded[-1]),
        [x for x in out.stderr.splitlines() if x.strip()],
        loaded[1] if len(loaded) == 3 else "",
    )


@pytest.mark.parametrize("case", ["data-dir", "info", "model-folder"])
def test_missing_paths_are_answered_without_importing_torch(tmp_path, case):
    (tmp_path / "empty").mkdir()
    args = {
        "data-dir": ["--dataset", "marketcalls", "--data-dir", str(tmp_path / "nowhere"), "-q"],
        "info": ["info", str(tmp_path / "nowhere.zarr")],
        "model-folder": [
            "--dataset",
            "demo",
            "--data-dir",
            str(tmp_path / "demo"),
            "--text-model",
            str(tmp_path / "empty"),
            "-q",
        ],
    }[case]
    code, lines, loaded = _light_call(args)
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert ("empty" if case == "model-folder" else "nowhere") in lines[0], lines
    assert loaded == "", f"imported {loaded} before saying so"
    assert not (tmp_path / "demo").exists(), "the demo's data was generated before the check"
