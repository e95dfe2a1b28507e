"""pipeline/labels.py checked function by function, without a store or a CLI: the built-in maps, the
sentiment rounding, the label summaries and every key check of a custom scheme (each test here kills
mutants that the end-to-end scheme tests in test_label_schemes.py let live; docs/testing.md)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.labels import (
    MARKETCALLS,
    MELD,
    SENTIMENT,
    LabelScheme,
    SchemeFileError,
    Task,
    _rounded,
    _task_from_groups,
    check_definition,
    label_counts,
    resolve_scheme,
    scheme_from_definition,
    scheme_from_record,
    scheme_record,
    sentiment_score,
)

GOOD = {"name": "mine", "classes": ["keen", "maybe", "no"]}


def definition(**changes):
    return {**GOOD, **changes}


def message(data, source="s.toml") -> str:
    with pytest.raises(SchemeFileError) as e:
        check_definition(data, source)
    return str(e.value)


def test_groups_become_classes_and_a_map_from_every_base_label():
    t = _task_from_groups("3", ["A", "BC", "DE"])
    assert t.name == "3" and t.classes == ("A", "B+C", "D+E")
    assert t.base_to_class == {"A": 0, "B": 1, "C": 1, "D": 2, "E": 2}
    assert [MARKETCALLS.task(k).classes for k in ("4", "2")] == [
        ("A", "B", "C", "D+E"),
        ("A+B+C", "D+E"),
    ]
    assert MARKETCALLS.encode(list("ABCDE"), "2").tolist() == [0, 0, 0, 1, 1]


def test_sentiment_classes_are_the_clipped_rounded_score_shifted_to_zero():
    five, seven = _rounded(-2, 2), _rounded(-3, 3)
    # round half to even, as the field's evaluation code (np.round)
    assert [five(x) for x in ("-3.0", "-2.6", "-0.5", "0.5", "1.5", "2.9")] == [0, 0, 2, 2, 4, 4]
    assert [seven(x) for x in ("-3.0", "-2.5", "0.4", "2.6", "3.0")] == [0, 1, 3, 6, 6]
    assert SENTIMENT.encode(["-1.4", "0.0"], "7").tolist() == [2, 3]


@pytest.mark.parametrize("bad", ["3.5", "-3.5", "4", "nan", "inf", "-inf"])
def test_a_sentiment_score_outside_minus_3_to_3_is_refused(bad):
    with pytest.raises(ValueError):
        sentiment_score(bad)
    assert sentiment_score("-3") == -3.0 and sentiment_score("3.0") == 3.0


def test_what_a_scheme_accepts_reads_its_description_else_its_labels():
    assert MARKETCALLS.accepted() == "A, B, C, D, E"
    assert SENTIMENT.accepted() == "a sentiment score in [-3, 3]"


def test_class_map_only_between_tasks_that_both_map_base_labels():
    mixed = LabelScheme(
        name="mixed",
        base_labels=("a", "b"),
        tasks=(
            Task("grouped", ("a", "b"), {"a": 0, "b": 1}),
            Task("computed", ("a", "b"), target=lambda label: int(label == "b")),
        ),
    )
    assert mixed.class_map("grouped", "computed") is None
    assert mixed.class_map("computed", "grouped") is None
    assert MARKETCALLS.class_map("5", "3").tolist() == [0, 1, 1, 2, 2]
    assert MELD.class_map("emotion", "sentiment") is None  # an emotion spans every sentiment


def test_label_counts_count_calls_once_for_call_labels():
    got = label_counts(
        "marketcalls", ["c1", "c1", "c2", "c3", "c4", "c5"], ["B", "B", "A", "", "B", ""]
    )
    assert got == {"calls per label": {"(none)": 2, "A": 1, "B": 2}}
    # an unknown scheme name (a custom scheme before it is read) counts calls too
    assert label_counts("nosuch", ["x", "x"], ["k", "k"]) == {"calls per label": {"k": 1}}


def test_label_counts_of_a_segment_level_scheme_object_count_segments_per_class():
    seg = scheme_from_definition(definition(level="segment"))
    got = label_counts(seg, ["d", "d", "d", "e"], ["keen", "no", "", "keen"])
    assert got == {"segments per 3-class": {"keen": 2, "maybe": 0, "no": 1, "(none)": 1}}


def test_a_built_in_scheme_records_nothing_and_a_custom_one_its_definition():
    assert scheme_record(MARKETCALLS) == {}
    mine = scheme_from_definition(GOOD)
    assert scheme_record(mine) == {"label_scheme_def": mine.definition}
    assert scheme_from_record("mine", mine.definition) == mine


def test_a_bad_stored_definition_names_the_stored_scheme():
    with pytest.raises(KeyError) as e:
        scheme_from_record("mine", definition(classes=["one"]))
    assert e.value.args[0].startswith("stored label scheme 'mine': key 'classes'"), e.value


def test_messages_name_their_source_default_and_given():
    with pytest.raises(SchemeFileError, match="^label scheme: a label scheme is a TOML table"):
        check_definition("x")
    with pytest.raises(SchemeFileError, match="^label scheme: key 'classes'"):
        scheme_from_definition(definition(classes=["one"]))


@pytest.mark.parametrize(
    "changes, expected",
    [
        (
            {"classes": []},
            "key 'classes': must be a non-empty list of labels as written in the CSV",
        ),
        (
            {"classes": "ab"},
            "key 'classes': must be a non-empty list of labels as written in the CSV",
        ),
        ({"classes": ["a+b", "c"]}, "key 'classes': 'a+b': a class has no '+'"),
        ({"classes": ["Keen", "keen"]}, "duplicate class 'keen' (same as 'Keen' but for case)"),
        ({"name": "my scheme"}, "key 'name': must be a name of letters"),
        ({"descriptions": "keen means keen"}, "key 'descriptions': must be a table"),
        ({"tasks": 5}, "key 'tasks': must be a table of task name"),
        ({"tasks": []}, "key 'tasks': is empty"),
        (
            {"tasks": [{"name": "t", "groups": [["keen"], ["maybe", "no"]], "extra": 1}]},
            "key 'tasks': must be a table of task name",
        ),
        ({"tasks": {"my task": [["keen"], ["maybe", "no"]]}}, "key 'tasks.my task': a task name"),
        (
            {
                "tasks": [
                    {"name": "t", "groups": [["keen"], ["maybe", "no"]]},
                    {"name": "t", "groups": [["keen", "maybe"], ["no"]]},
                ]
            },
            "key 'tasks.t': the task is defined twice",
        ),
        (
            {"tasks": {"t": [["keen"], "maybe"]}},
            "s.toml: key 'tasks.t': must be a non-empty list of classes in each group (strings)",
        ),
    ],
)
def test_every_bad_key_is_named_with_what_it_must_be(changes, expected):
    got = message(definition(**changes))
    assert got.startswith("s.toml: ") and expected in got, got


def test_the_stored_task_list_form_reads_back_in_order():
    stored = check_definition(definition(tasks={"two": [["keen"], ["maybe", "no"]]}))
    assert stored["tasks"] == [{"name": "two", "groups": [["keen"], ["maybe", "no"]]}]
    assert check_definition(stored) == stored
    scheme = scheme_from_definition(stored)
    assert scheme.task_names == ("two",)
    assert scheme.encode(["no", "keen"], "two").tolist() == [1, 0]


def test_a_scheme_file_is_found_as_given_else_in_the_dataset_folder(tmp_path, monkeypatch):
    here, data = tmp_path / "here", tmp_path / "data"
    here.mkdir()
    data.mkdir()
    (data / "s.toml").write_text('name = "indata"\nclasses = ["a", "b"]\n', encoding="utf-8")
    (data / "t.toml").write_text('name = "t_data"\nclasses = ["a", "b"]\n', encoding="utf-8")
    (here / "t.toml").write_text('name = "t_here"\nclasses = ["a", "b"]\n', encoding="utf-8")
    monkeypatch.chdir(here)
    assert resolve_scheme("s.toml", base=data).name == "indata"
    # a path that names a file as given wins over the dataset folder's file of that name
    assert resolve_scheme("t.toml", base=data).name == "t_here"
    assert resolve_scheme("t.toml").name == "t_here"
    assert resolve_scheme(str(data / "s.toml")).name == "indata"
    with pytest.raises(SchemeFileError, match="no such label scheme file"):
        resolve_scheme("s.toml")
    assert resolve_scheme("meld") is MELD
    assert np.array_equal(resolve_scheme(MARKETCALLS).encode(["E"], "5"), [4])
