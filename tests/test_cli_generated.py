"""The command lines are generated from their settings dataclasses: every field that is an option
has one, with the field's default; negatable switches negate; one KEY=VALUE reader; one way out."""

from __future__ import annotations

import dataclasses

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import UsageError, cli_errors, parse_key_values, parse_value
from predict.cli import main as predict_main
from predict.config import PredictConfig
from predict.serve_cli import main as serve_main
from predict.serve_config import ServeConfig
from train.cli import main as train_main
from train.config import NEGATABLE, POOLINGS, TrainConfig
from train.sweep import SweepOptions
from train.sweep_cli import run_cmd as sweep_run
from train.variants import POOLINGS as POOLING_PARTS

# field -> the option's destination where the two differ (a repeatable option, a renamed one)
NOT_OPTIONS = {
    TrainConfig: {"progress"},
    SweepOptions: {"progress"},
    PredictConfig: {"group_calls", "batch_seconds", "progress"},
    ServeConfig: set(),
}
DEST = {PredictConfig: {"run": "run_dir"}}


@pytest.mark.parametrize(
    "cls, command",
    [
        (TrainConfig, train_main),
        (SweepOptions, sweep_run),
        (PredictConfig, predict_main),
        (ServeConfig, serve_main),
    ],
)
def test_every_field_is_an_option_with_the_fields_default(cls, command):
    params = {p.name: p for p in command.params}
    for f in dataclasses.fields(cls):
        if f.name in NOT_OPTIONS[cls]:
            assert f.name not in params
            continue
        p = params[DEST.get(cls, {}).get(f.name, f.name)]
        assert p.help or isinstance(p, click.Argument), f.name
        if p.multiple or f.default is dataclasses.MISSING:
            continue
        assert p.default == f.default, (f.name, p.default, f.default)


def test_negatable_switches_negate_and_are_the_fields_that_default_to_true():
    params = {p.name: p for p in train_main.params}
    for name in NEGATABLE:
        if name == "progress":
            continue
        p = params[name]
        assert p.secondary_opts == [f"--no-{name.replace('_', '-')}"] and p.default is True
    ctx = train_main.make_context("msmtfn-train", ["--cache", "c", "--no-bigru", "--no-amp"])
    assert ctx.params["bigru"] is False and ctx.params["amp"] is False and ctx.params["mtl"] is True


def test_the_pooling_choices_are_the_registered_poolings():
    assert set(POOLINGS) == set(POOLING_PARTS)


def test_key_value_reader():
    got = parse_key_values(
        ("a=1", "b=0.5", "c=true", "d=No", "e=text", "f=.001", "g=020", 'h=["x"]', "i= 2 "),
        "--set",
        example="a=1",
    )
    assert got == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": False,
        "e": "text",
        "f": 0.001,
        "g": 20,
        "h": ["x"],
        "i": 2,
    }
    assert parse_value("0.8,0.1,0.1") == "0.8,0.1,0.1"
    for bad in ("novalue", "=3"):
        with pytest.raises(UsageError, match=r"--set .*expected KEY=VALUE, e.g. a=1"):
            parse_key_values((bad,), "--set", example="a=1")
    with pytest.raises(UsageError, match="expected KEY=NUMBER"):
        parse_key_values(("2=half",), "--loss-weight", example="2=0.5", number=True)
    with pytest.raises(UsageError, match="expected KEY=NUMBER"):
        parse_key_values(("2=true",), "--loss-weight", example="2=0.5", number=True)


def test_one_way_out_exit_codes():
    @click.command()
    @click.argument("what")
    def cmd(what):
        with cli_errors(user=(KeyError,), usage=(ValueError,)):
            raise {
                "user": KeyError("k"),
                "usage": ValueError("v"),
                "ctrl-c": KeyboardInterrupt("kept"),
            }[what]

    runner = CliRunner()
    assert runner.invoke(cmd, ["user"]).exit_code == 1
    r = runner.invoke(cmd, ["usage"])
    assert r.exit_code == 2 and "v" in r.output
    r = runner.invoke(cmd, ["ctrl-c"])
    assert r.exit_code == 130 and "kept" in r.output


def test_bad_loss_weight_is_bad_usage(tmp_path):
    r = CliRunner().invoke(train_main, ["--cache", str(tmp_path), "--loss-weight", "2=half"])
    assert r.exit_code == 2 and "--loss-weight '2=half': expected KEY=NUMBER" in r.output


def test_predict_config_device_defaults_as_the_command_line():
    cfg = PredictConfig(run="r", audio=("a.wav",), transcripts="t.csv")
    assert cfg.device in ("cpu", "cuda")  # "auto", resolved as --device auto is
