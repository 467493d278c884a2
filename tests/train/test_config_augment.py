"""TrainConfig: augmentation presets and overrides, automatic ZCA group size, old keys."""

from __future__ import annotations

import pytest

from collapsekit.errors import ConfigError
from collapsekit.train.config import TrainConfig, config_from_dict


def test_default_preset_and_overrides() -> None:
    cfg = TrainConfig()
    assert cfg.augment == "ct"
    assert cfg.augmentation() == {
        "size": 128,
        "scale": (0.2, 1.0),
        "jitter_p": 0.8,
        "jitter_strength": 0.25,
        "blur_p": 0.0,
    }
    over = config_from_dict({"augment": "mocov2", "crop_min_scale": 0.5, "blur_p": 0.0}, None)
    assert over.augmentation() == {
        "size": 128,
        "scale": (0.5, 1.0),
        "jitter_p": 0.8,
        "jitter_strength": 1.0,
        "blur_p": 0.0,
    }
    assert config_from_dict({}, "demo").augmentation()["scale"] == (0.8, 1.0)
    with pytest.raises(ConfigError, match="did you mean 'demo'"):
        config_from_dict({"augment": "dem"}, None)


def test_old_configs_keep_their_meaning() -> None:
    # <= 0.2: no preset, jitter at MoCo v2's strength; local_same_image_negatives a bool
    old = {"crop_min_scale": 0.2, "jitter_p": 0.8, "blur_p": 0.5}
    cfg = config_from_dict({**old, "model": {"local_same_image_negatives": False}}, None)
    assert cfg.augment == "mocov2" and cfg.augmentation()["jitter_strength"] == 1.0
    assert cfg.model.local_negatives == "other_images"
    both = config_from_dict({"model": {"local_same_image_negatives": True}}, None)
    assert both.model.local_negatives == "both"


def test_zca_group_size_zero_is_resolved_from_the_batch() -> None:
    block = config_from_dict({}, None, model={"method": "zca"})
    assert block.model.zca_group_size == 64  # m = 16 · 4 · 4 = 256
    pre = config_from_dict({}, None, model={"method": "zca", "zca_placement": "pre_projector"})
    assert pre.whitening_samples == 16 and pre.model.zca_group_size == 4
    big = config_from_dict(
        {"batch_size": 256}, None, model={"method": "zca", "zca_placement": "pre_projector"}
    )
    assert big.model.zca_group_size == 32
    fair = config_from_dict({}, "fair96", model={"method": "local+zca"})
    assert fair.model.zca_group_size == 32 and fair.model.local_negatives == "same_image"
    explicit = config_from_dict({}, None, model={"method": "zca", "zca_group_size": 16})
    assert explicit.model.zca_group_size == 16


def test_old_checkpoint_model_config_loads() -> None:
    from collapsekit.runs.models import model_config_from_checkpoint

    old = {"model": {"method": "local", "local_same_image_negatives": True}}
    assert model_config_from_checkpoint(old, "old.pt").local_negatives == "both"
