"""A user's own labels and transcripts, typed as the user types them: a custom 3-class label scheme from a TOML
file extracts, trains, predicts and sweeps like a built-in one (read from the store, not the file); a bad scheme
file, a misnamed transcript column and one missing recording named by many rows are each one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_sweep_base, write_marketcalls, write_wav

from extract.cli import main as extract_cli
from pipeline.datasets import ManifestError, load_manifest
from pipeline.labels import (
    MARKETCALLS,
    SchemeFileError,
    get_scheme,
    load_scheme_file,
    scheme_from_record,
)
from pipeline.store import CacheStore
from predict.cli import main as predict_cli
from train.cli import main as train_cli
from train.sweep_cli import main as sweep_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

INTENT3 = """name = "intent3"
classes = ["keen", "maybe", "no"]          # the labels as written in the CSV
[tasks]
3 = [["keen"], ["maybe"], ["no"]]
2 = [["keen", "maybe"], ["no"]]
"""
WORDS = "好的可以我想了解一下价格不需要谢谢再见"
TINY_TRAIN = [
    "--d-model",
    "16",
    "--heads",
    "2",
    "--ffn",
    "32",
    "--gru-hidden",
    "8",
    "--head-hidden",
    "16",
    "--cross-layers",
    "1",
    "--bottleneck-layers",
    "1",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--no-plots",
    "-q",
]


def write_calls(
    root: Path, labels=("keen", "maybe", "no"), calls: int = 18, text_column: str = "text"
) -> Path:
    """A generic CSV dataset: ``calls`` calls of 1-2 short segments, labels cycling through ``labels``."""
    rows = []
    for c in range(calls):
        for k in range(1 + c % 2):
            name = f"rec/c{c:02d}_{k}.wav"
            write_wav(
                root / name, 1.0 + 0.25 * ((c + k) % 3), seed=7 * c + k, freq=120 + 25 * (c % 3)
            )
            text = "".join(WORDS[(c * 3 + k + i) % len(WORDS)] for i in range(4 + (c + k) % 6))
            rows.append(
                {
                    "call_id": f"c{c:02d}",
                    "audio": name,
                    text_column: text,
                    "label": labels[c % len(labels)],
                }
            )
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "calls.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["call_id", "audio", text_column, "label"])
        w.writeheader()
        w.writerows(rows)
    return root


def extract_args(data: Path, out: Path, enc: dict) -> list[str]:
    return [
        "--dataset",
        "csv",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--audio-model",
        str(enc["group"]),
        "--text-model",
        str(enc["text"]),
        "--loader-workers",
        "0",
        "--max-text-tokens",
        "16",
        "-q",
    ]


def error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.strip()]


# ---------------------------------------------------------------------------------------------- a custom scheme
@pytest.fixture(scope="module")
def custom(tiny_encoders, tmp_path_factory):
    """msmtfn-extract --label-scheme intent3.toml, then msmtfn-train on the store after the file is gone."""
    root = tmp_path_factory.mktemp("schemes")
    data = write_calls(root / "data")
    scheme_file = root / "intent3.toml"
    scheme_file.write_text(INTENT3, encoding="utf-8")
    store = root / "intent.zarr"
    r = CliRunner().invoke(
        extract_cli, [*extract_args(data, store, tiny_encoders), "--label-scheme", str(scheme_file)]
    )
    assert r.exit_code == 0, r.output
    scheme_file.unlink()  # the store, not the file, is what training reads
    r = CliRunner().invoke(
        train_cli,
        [
            "--cache",
            str(store),
            "--out",
            str(root / "run"),
            "--epochs",
            "2",
            "--lr",
            "1e-3",
            *TINY_TRAIN,
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.output)
    return {
        "root": root,
        "data": data,
        "store": store,
        "run": Path(metrics["run_dir"]),
        "metrics": metrics,
        "file": scheme_file,
    }


def test_custom_scheme_is_copied_into_the_store_and_trained_on(custom):
    s = CacheStore.open(custom["store"])
    assert s.label_scheme == "intent3" and s.label_scheme_def["classes"] == ["keen", "maybe", "no"]
    assert s.scheme.task_names == ("3", "2") and s.scheme.task("2").classes == ("keen+maybe", "no")
    m = custom["metrics"]
    assert m["config"]["task"] == "3", "the first task of the file is the main one"
    assert set(m["test"]) == {"3", "2"}, "the custom tasks, not MarketCalls' 5/4/3/2"
    conf = json.loads((custom["run"] / "config.json").read_text())
    assert conf["cache"]["label_scheme"] == "intent3"
    assert scheme_from_record("intent3", conf["cache"]["label_scheme_def"]).task("2").classes == (
        "keen+maybe",
        "no",
    )


def test_info_names_the_custom_scheme_its_tasks_and_classes(custom):
    r = CliRunner().invoke(extract_cli, ["info", str(custom["store"])])
    assert r.exit_code == 0, r.output
    assert "labels: intent3, custom, defined in the store" in r.output
    assert "3: keen | maybe | no; 2: keen+maybe | no" in r.output


def test_predict_from_the_cache_gives_the_custom_columns(custom, tmp_path):
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(
        predict_cli,
        [
            "--run",
            str(custom["run"]),
            "--cache",
            str(custom["store"]),
            "--split",
            "test",
            "--out",
            str(out),
            "--device",
            "cpu",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert rows and {
        "pred_3",
        "pred_2",
        "p_3_keen",
        "p_3_maybe",
        "p_3_no",
        "p_2_keen+maybe",
        "p_2_no",
    } <= set(rows[0])
    assert {r["pred_3"] for r in rows} <= {"keen", "maybe", "no"}
    assert {r["pred_2"] for r in rows} <= {"keen+maybe", "no"}
    assert not any(k.startswith("p_5_") for k in rows[0])


def test_predict_new_recordings_gives_the_custom_columns(custom, tmp_path):
    """The --audio route reads the scheme from the run's config.json (no cache, no scheme file)."""
    wav = write_wav(tmp_path / "newcall.wav", 2.5, seed=99)
    tr = tmp_path / "t.csv"
    tr.write_text(
        "call_id,start,end,text\nnewcall,0,1.2,我想了解一下\nnewcall,1.2,,不需要谢谢\n",
        encoding="utf-8",
    )
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(
        predict_cli,
        [
            "--run",
            str(custom["run"]),
            "--audio",
            str(wav),
            "--transcripts",
            str(tr),
            "--out",
            str(out),
            "--device",
            "cpu",
            "-q",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert [t["name"] for t in json.loads(r.output)["tasks"]] == ["3", "2"]
    row = next(csv.DictReader(open(out, encoding="utf-8")))
    assert row["pred_2"] in ("keen+maybe", "no") and "p_2_keen+maybe" in row and "p_3_maybe" in row


def test_sweep_tables_name_the_custom_tasks(custom, tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(
        tiny_sweep_base(epochs=1) + '\n[[trial]]\nname = "full"\n\n[[trial]]\nname = "no gru"\n'
        "bigru = false\n",
        encoding="utf-8",
    )
    out = tmp_path / "sw"
    r = CliRunner().invoke(
        sweep_cli,
        [
            "--cache",
            str(custom["store"]),
            "--grid",
            str(grid),
            "--out",
            str(out),
            "--seeds",
            "1",
            "--device",
            "cpu",
            "-q",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "| full |" in table and "| no gru |" in table
    header = next(ln for ln in table.splitlines() if ln.startswith("| configuration"))
    assert (
        "acc3" in header and "acc2" in header and "acc5" not in header and "acc4" not in header
    ), header


def test_a_changed_scheme_file_is_a_changed_store(custom, tiny_encoders, tmp_path):
    """The definition is in the fingerprint: the same name with other groups does not resume the store."""
    f = tmp_path / "intent3.toml"
    f.write_text(
        INTENT3.replace('2 = [["keen", "maybe"], ["no"]]', '2 = [["keen"], ["maybe", "no"]]'),
        encoding="utf-8",
    )
    r = CliRunner().invoke(
        extract_cli,
        [
            *extract_args(custom["data"], custom["store"], tiny_encoders),
            "--option",
            f"label_scheme={f}",
        ],
    )
    assert r.exit_code == 1 and "the manifest" in r.output and "--overwrite" in r.output, r.output
    assert CacheStore.open(custom["store"]).scheme.task("2").classes == ("keen+maybe", "no"), (
        "store untouched"
    )
    m1 = load_manifest("csv", custom["data"], label_scheme=str(f))
    f.write_text(INTENT3, encoding="utf-8")
    m2 = load_manifest("csv", custom["data"], label_scheme=str(f))
    m3 = load_manifest("csv", custom["data"], label_scheme=str(f))
    assert m1.digest() != m2.digest() == m3.digest()


def test_a_run_refuses_a_cache_with_another_definition_of_its_scheme(
    custom, tiny_encoders, tmp_path
):
    f = tmp_path / "intent3.toml"
    f.write_text(
        INTENT3.replace('2 = [["keen", "maybe"], ["no"]]', '2 = [["keen"], ["maybe", "no"]]'),
        encoding="utf-8",
    )
    other = tmp_path / "other.zarr"
    r = CliRunner().invoke(
        extract_cli, [*extract_args(custom["data"], other, tiny_encoders), "--label-scheme", str(f)]
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        predict_cli,
        [
            "--run",
            str(custom["run"]),
            "--cache",
            str(other),
            "--split",
            "test",
            "--out",
            str(tmp_path / "p.csv"),
            "--device",
            "cpu",
            "-q",
        ],
    )
    assert r.exit_code != 0 and "another definition" in r.output, r.output


def test_info_says_what_each_marketcalls_class_means(tmp_path, tiny_encoders):
    data = write_marketcalls(tmp_path / "mc", calls=5, segments=1)
    out = tmp_path / "mc.zarr"
    args = extract_args(data, out, tiny_encoders)
    args[1] = "marketcalls"
    r = CliRunner().invoke(extract_cli, args)
    assert r.exit_code == 0, r.output
    store = CacheStore.open(out)
    assert "label_scheme_def" not in store.attrs and store.scheme is MARKETCALLS, (
        "a built-in store is as before"
    )
    r = CliRunner().invoke(extract_cli, ["info", str(out)])
    assert r.exit_code == 0, r.output
    for lab in "ABCDE":
        assert f"{lab}: {MARKETCALLS.class_descriptions[lab]}" in r.output
    assert "5: A | B | C | D | E; 4: A | B | C | D+E; 3: A | B+C | D+E; 2: A+B+C | D+E" in r.output


def test_built_in_schemes_and_old_stores_read_as_before():
    assert MARKETCALLS.definition is None and get_scheme("marketcalls") is MARKETCALLS
    assert (
        scheme_from_record("marketcalls") is MARKETCALLS
        and scheme_from_record("meld").name == "meld"
    )
    assert set(MARKETCALLS.class_descriptions) == set("ABCDE")
    assert all("purchase-intent" in v for v in MARKETCALLS.class_descriptions.values())


def test_without_tasks_one_task_named_by_the_class_count(tmp_path):
    f = tmp_path / "yesno.toml"
    f.write_text(
        'name = "yesno"\nclasses = ["yes", "no"]\nselection = "accuracy"\n', encoding="utf-8"
    )
    f.write_text(
        'name = "yesno"\nclasses = ["yes", "no"]\nselection = "accuracy"\n[descriptions]\n'
        'yes = "will buy"\n',
        encoding="utf-8",
    )
    s = load_scheme_file(f)
    assert s.class_descriptions == {"yes": "will buy"}
    assert (
        s.task_names == ("2",)
        and s.task("2").classes == ("yes", "no")
        and s.selection == "accuracy"
    )
    data = write_calls(tmp_path / "d", labels=("Yes", "no"), calls=6)
    m = load_manifest("csv", data, label_scheme=str(f))
    assert {seg.label for seg in m.segments} == {"yes", "no"}, (
        "labels are matched case-insensitively"
    )
    assert m.label_scheme == "yesno" and m.label_scheme_def["tasks"] == [
        {"name": "2", "groups": [["yes"], ["no"]]}
    ]


def test_a_segment_level_scheme_keeps_each_rows_label(tmp_path):
    f = tmp_path / "turns.toml"
    f.write_text('name = "turns"\nclasses = ["pos", "neg"]\nlevel = "segment"\n', encoding="utf-8")
    data = write_calls(tmp_path / "d", labels=("pos", "neg"), calls=6)
    rows = list(csv.DictReader(open(data / "calls.csv", encoding="utf-8")))
    assert rows[1]["call_id"] == rows[2]["call_id"] == "c01"
    rows[1]["label"] = "pos"  # call c01's two rows: pos, then neg
    with open(data / "calls.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    m = load_manifest("csv", data, label_scheme=str(f))
    assert m.scheme.level == "segment" and not any("different labels" in x.reason for x in m.issues)
    assert [s.label for s in m.calls()["c01"]] == ["pos", "neg"]


BAD = [
    ('name = "x"\nclasses = ["a", "b"]\ncolour = "red"\n', "colour"),
    ('name = "x"\nclasses = []\n', "classes"),
    ('name = "x"\nclasses = ["a", "b", "a"]\n', "classes"),
    ('name = "x"\nclasses = "a,b"\n', "classes"),
    ('classes = ["a", "b"]\n', "name"),
    ('name = "marketcalls"\nclasses = ["a", "b"]\n', "name"),
    ('name = "x"\nclasses = ["a", "b"]\nselection = "f2"\n', "selection"),
    ('name = "x"\nclasses = ["a", "b"]\nlevel = "utterance"\n', "level"),
    ('name = "x"\nclasses = ["a", "b", "c"]\n[tasks]\n2 = [["a"], ["z"]]\n', "tasks.2"),
    ('name = "x"\nclasses = ["a", "b", "c"]\n[tasks]\n2 = [["a"], ["b"]]\n', "tasks.2"),
    ('name = "x"\nclasses = ["a", "b", "c"]\n[tasks]\n2 = [["a", "b"], ["b", "c"]]\n', "tasks.2"),
    ('name = "x"\nclasses = ["a", "b"]\n[tasks]\n2 = [["a", "b"]]\n', "tasks.2"),
    ('name = "x"\nclasses = ["a", "b"]\n[descriptions]\nz = "?"\n', "descriptions.z"),
]


@pytest.mark.parametrize("body,key", BAD, ids=[k + str(i) for i, (_, k) in enumerate(BAD)])
def test_a_bad_scheme_file_is_one_line_naming_the_file_and_the_key(
    tmp_path, tiny_encoders, body, key
):
    data = write_calls(tmp_path / "d", calls=3)
    f = tmp_path / "mine.toml"
    f.write_text(body, encoding="utf-8")
    out = tmp_path / "c.zarr"
    r = CliRunner().invoke(
        extract_cli, [*extract_args(data, out, tiny_encoders), "--label-scheme", str(f)]
    )
    lines = error_lines(r.output)
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith("Error: ") and str(f) in lines[0] and f"key {key!r}" in lines[0], (
        lines[0]
    )
    assert not out.exists()
    with pytest.raises(ManifestError, match=f"key '{key}'"):
        load_manifest("csv", data, label_scheme=str(f))


def test_bad_toml_and_a_missing_file_via_option_are_one_line(tmp_path, tiny_encoders):
    data = write_calls(tmp_path / "d", calls=3)
    f = tmp_path / "broken.toml"
    f.write_text('name = "x"\nclasses = ["a", "b"\n', encoding="utf-8")
    for value, words in (
        (f, "not valid TOML"),
        (tmp_path / "none.toml", "no such label scheme file"),
    ):
        r = CliRunner().invoke(
            extract_cli,
            [
                *extract_args(data, tmp_path / "c.zarr", tiny_encoders),
                "--option",
                f"label_scheme={value}",
            ],
        )
        lines = error_lines(r.output)
        assert (
            r.exit_code == 2 and len(lines) == 1 and str(value) in lines[0] and words in lines[0]
        ), r.output
    with pytest.raises(SchemeFileError, match="not valid TOML"):
        load_scheme_file(f)
    r = CliRunner().invoke(
        extract_cli, ["--dataset", "marketcalls", "--data-dir", str(data), "--label-scheme", str(f)]
    )
    assert r.exit_code == 2 and "--dataset csv" in r.output


# ---------------------------------------------------------------------------------------------- transcripts
def test_a_misnamed_transcript_column_stops_before_any_work(tmp_path, tiny_encoders):
    data = write_calls(
        tmp_path / "d", labels=("A", "B", "C", "D", "E"), calls=10, text_column="transcript"
    )
    out = tmp_path / "c.zarr"
    r = CliRunner().invoke(extract_cli, extract_args(data, out, tiny_encoders))
    lines = error_lines(r.output)
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert "calls.csv" in lines[0] and "rename column 'transcript' to 'text'" in lines[0], lines[0]
    assert "no_text=true" in lines[0] and not out.exists()
    with pytest.raises(ManifestError, match="rename column 'transcript' to 'text'"):
        load_manifest("csv", data)
    # the option says the calls really have no transcripts: one note, no warning per row
    m = load_manifest("csv", data, no_text=True)
    notes = [str(x) for x in m.issues]
    assert len(notes) == 1 and "no transcripts" in notes[0] and "15 of 15 rows" in notes[0], notes
    r = CliRunner().invoke(
        extract_cli, [*extract_args(data, out, tiny_encoders), "--option", "no_text=true"]
    )
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    noted = [i["reason"] for i in report["manifest_issues"] if "transcript" in i["reason"]]
    assert noted == [m.issues[0].reason], noted


def test_a_speaker_column_is_not_taken_for_transcripts(tmp_path):
    data = write_calls(tmp_path / "d", labels=("A", "B"), calls=6, text_column="speaker")
    rows = list(csv.DictReader(open(data / "calls.csv", encoding="utf-8")))
    for i, r in enumerate(rows):
        r["speaker"] = ("agent", "customer")[i % 2]
    with open(data / "calls.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    m = load_manifest(
        "csv", data
    )  # no transcripts and nothing that looks like them: warnings, as before
    assert sum("empty transcript" in x.reason for x in m.issues) == len(rows)


def test_marketcalls_empty_text_beside_a_transcript_column_stops_too(tmp_path):
    data = write_marketcalls(tmp_path / "mc", calls=6, segments=2)
    for split in ("train", "valid", "test"):
        p = data / f"{split}.csv"
        rows = list(csv.DictReader(open(p, encoding="utf-8")))
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["phone", "Audio_id", "text", "transcript", "label"])
            w.writeheader()
            w.writerows({**r, "transcript": r["text"], "text": ""} for r in rows)
    with pytest.raises(ManifestError, match="rename column 'transcript' to 'text'"):
        load_manifest("marketcalls", data)
    m = load_manifest("marketcalls", data, no_text="true")
    assert not any("empty transcript" in x.reason for x in m.issues)


# ---------------------------------------------------------------------------------------------- one bad file
def test_one_missing_recording_named_by_ten_rows_is_one_line(tmp_path, tiny_encoders):
    data = write_calls(tmp_path / "d", labels=("A", "B", "C", "D", "E"), calls=10)
    rows = list(csv.DictReader(open(data / "calls.csv", encoding="utf-8")))
    extra = [
        {"call_id": f"m{i}", "audio": "rec.wav", "text": "你好", "label": "B"} for i in range(10)
    ]
    with open(data / "calls.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows + extra)
    first = len(rows) + 2  # the header is line 1
    wheres = [f"calls.csv:{first + i}" for i in range(10)]
    m = load_manifest("csv", data)
    hits = [x for x in m.issues if "rec.wav" in str(x)]
    assert len(hits) == 1 and hits[0].rows == tuple(wheres) and "(10 rows)" in str(hits[0]), [
        str(x) for x in hits
    ]
    assert str(hits[0]).startswith(f"calls.csv:{first}, :{first + 1}") and "rows skipped" in str(
        hits[0]
    )
    out = tmp_path / "c.zarr"
    r = CliRunner().invoke(extract_cli, extract_args(data, out, tiny_encoders))
    assert r.exit_code == 3, r.output
    lines = [ln for ln in r.output.splitlines() if "rec.wav" in ln]
    assert len(lines) == 1 and "(10 rows)" in lines[0] and f":{first + 9}" in lines[0], r.output
    assert "10 dataset rows left out" in r.output
    report = json.loads((out / "report.json").read_text())
    entries = [i for i in report["manifest_issues"] if "rec.wav" in i["reason"]]
    assert len(entries) == 1 and entries[0]["rows"] == wheres


def test_train_task_accepts_a_custom_schemes_own_task_names(tmp_path, tiny_encoders):
    """`--task buy` names a task of the cache's own scheme (not a built-in's): accepted; a name the cache's
    scheme lacks is bad usage naming its tasks."""
    data = write_calls(tmp_path / "data")
    (tmp_path / "s.toml").write_text(
        'name = "buying"\nclasses = ["keen", "maybe", "no"]\n[tasks]\n'
        'intent = [["keen"], ["maybe"], ["no"]]\nbuy = [["keen", "maybe"], ["no"]]\n',
        encoding="utf-8",
    )
    store = tmp_path / "b.zarr"
    r = CliRunner().invoke(
        extract_cli,
        [*extract_args(data, store, tiny_encoders), "--label-scheme", str(tmp_path / "s.toml")],
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        train_cli,
        ["--cache", str(store), "--task", "nope", "--out", str(tmp_path / "x"), *TINY_TRAIN],
    )
    (line,) = error_lines(r.output)[-1:]
    assert r.exit_code == 2 and f"{store}'s label scheme buying: intent, buy" in line, r.output
    r = CliRunner().invoke(
        train_cli,
        [
            "--task",
            "buy",
            "--cache",
            str(store),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            *TINY_TRAIN,
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert m["config"]["task"] == "buy" and set(m["test"]) == {"intent", "buy"}
