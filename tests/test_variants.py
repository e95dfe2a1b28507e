"""The fusion parts' registry (train/variants.py) and the model's modules (train/model.py) agree;
the TrainConfig flags name the parts; what a part declares decides the batches, the audio-path rule
and the run folder's name."""

from __future__ import annotations

import pytest
import torch

from train.config import ConfigError, TrainConfig
from train.loop import default_run_dir
from train.model import (
    FUSION_MODULES,
    POOLING_MODULES,
    SECOND_BRANCH_MODULES,
    ModelDims,
    build_model,
)
from train.variants import FUSIONS, POOLINGS, SECOND_BRANCHES, ModelConfig

DIMS = ModelDims(audio_dim=16, text_dim=24, text_tokens=8, tasks={"5": 5, "2": 2})
SMALL = dict(d_model=32, heads=4, ffn=64, gru_hidden=16, head_hidden=32, cross_layers=1)


def test_every_registered_part_has_a_module_and_every_module_is_registered():
    for table, modules in (
        (SECOND_BRANCHES, SECOND_BRANCH_MODULES),
        (FUSIONS, FUSION_MODULES),
        (POOLINGS, POOLING_MODULES),
    ):
        assert set(table) - {"none"} == set(modules)


@pytest.mark.parametrize(
    "kw, parts",
    [
        ({}, ("text", "cross", "bottleneck", "mean")),
        ({"cross_attention": False}, ("text", "audio", "bottleneck", "mean")),
        ({"bottleneck": False, "pooling": "cls"}, ("text", "cross", "concat", "cls")),
        ({"modality": "text", "pooling": "flatten"}, ("text", "none", "none", "flatten")),
        ({"modality": "audio", "pooling": "flatten"}, ("audio", "none", "none", "cls")),
    ],
)
def test_train_flags_name_the_parts(kw, parts):
    c = ModelConfig.from_train(TrainConfig(cache="x", **kw))
    assert (c.backbone, c.second_branch, c.fusion, c.pooling) == parts
    model = build_model(TrainConfig(cache="x", **SMALL, **kw), DIMS)
    for attr, table in (("second_branch", SECOND_BRANCH_MODULES), ("fusion", FUSION_MODULES)):
        name = getattr(c, attr)
        module = getattr(model, attr)
        assert (module is None) if name == "none" else type(module) is table[name]
    assert type(model.pool) is POOLING_MODULES[c.pooling]


def test_the_model_never_sees_training_settings():
    model = build_model(TrainConfig(cache="x", lr=0.5, epochs=3, **SMALL), DIMS)
    assert isinstance(model.cfg, ModelConfig) and not hasattr(model.cfg, "lr")
    assert model.cfg.task == "5"  # the dataset's first task


def test_what_the_parts_declare():
    flat = ModelConfig.from_train(TrainConfig(cache="x", pooling="flatten"))
    assert flat.needs_every_text_row and flat.modalities == ("audio", "text")
    assert not ModelConfig.from_train(TrainConfig(cache="x")).needs_every_text_row
    assert ModelConfig.from_train(TrainConfig(cache="x", modality="text")).modalities == ("text",)
    assert ModelConfig.from_train(TrainConfig(cache="x", modality="audio")).modalities == ("audio",)
    assert "--cross-layers 0" in ModelConfig(cross_layers=0).audio_path_problem()
    assert "--bottleneck-layers 0" in ModelConfig(bottleneck_layers=0).audio_path_problem()
    assert ModelConfig(second_branch="audio", cross_layers=0).audio_path_problem() is None
    assert ModelConfig(fusion="concat", bottleneck_layers=0).audio_path_problem() is None


def test_the_model_cuts_text_rows_only_when_no_part_needs_them_all():
    for pooling, keeps_all in (("flatten", True), ("mean", False)):
        model = build_model(TrainConfig(cache="x", pooling=pooling, **SMALL), DIMS)
        assert model.needs_every_text_row is keeps_all


def test_inconsistent_parts_are_refused():
    with pytest.raises(ConfigError, match="needs a fusion"):
        ModelConfig(second_branch="cross", fusion="none")
    with pytest.raises(ConfigError, match="valid are"):
        ModelConfig(pooling="max")
    with pytest.raises(ConfigError, match="flatten"):
        ModelConfig(backbone="audio", second_branch="none", fusion="none", pooling="flatten")


def test_run_folder_names_come_from_the_parts():
    name = default_run_dir(TrainConfig(cache="x", cross_attention=False, bigru=False), "d").name
    assert "-both-no-bigru-no-xattn-s0" in name
    assert "-text-s0" in default_run_dir(TrainConfig(cache="x", modality="text"), "d").name


def test_older_runs_state_dict_names_still_load(tmp_path):
    from train.checkpoint import load_weights, save_weights

    torch.manual_seed(0)
    model = build_model(TrainConfig(cache="x", pooling="flatten", **SMALL), DIMS)
    old_names = {
        k.replace("second_branch.", "second_layers.")
        .replace("fusion.tokens", "bottleneck_tokens")
        .replace("fusion.layers.", "bottleneck_layers.")
        .replace("fusion.norm.", "second_norm.")
        .replace("pool.", "flatten."): v
        for k, v in model.state_dict().items()
    }
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in old_names.items()}, str(tmp_path / "old.safetensors"))
    torch.manual_seed(1)
    fresh = build_model(TrainConfig(cache="x", pooling="flatten", **SMALL), DIMS)
    load_weights(fresh, tmp_path / "old.safetensors", torch.device("cpu"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    save_weights(fresh, tmp_path / "new.safetensors")  # today's names round-trip too
    load_weights(model, tmp_path / "new.safetensors", torch.device("cpu"))
