"""Ablation budgets: a frozen Budget whose settings dict keeps the results.json keys."""

from __future__ import annotations

import pytest

from collapsekit.errors import ConfigError
from collapsekit.experiments.ablation import BUDGET_KEYS, BUDGETS, AblationConfig, Budget


def test_settings_dict_has_the_results_json_keys():
    # the keys results.json has always stored under "settings" for the demo budget
    assert BUDGETS["demo"].to_dict() == {
        "train_budget": "demo",
        "arch": "resnet18",
        "image_size": 64,
        "phantom_cases": 48,
        "samples": 1024,
        "probe_epochs": 20,
        "probe_image_size": 64,
        "probe_output_stride": 8,
    }
    assert "train_budget" not in BUDGETS["paper"].to_dict()
    assert BUDGETS["paper"].to_dict()["queue_size"] == 65536


def test_overrides_replace_fields_and_unknown_keys_fail():
    cfg = AblationConfig(budget="small", overrides={"epochs": 1, "steps": 3})
    assert isinstance(cfg.settings, Budget)
    assert (cfg.settings.epochs, cfg.settings.steps, cfg.settings.arch) == (1, 3, "resnet18")
    assert BUDGETS["small"].epochs == 10  # budgets are frozen, never mutated
    with pytest.raises(ConfigError, match="unknown budget keys"):
        AblationConfig(overrides={"epoch": 1})


def test_every_budget_key_may_be_overridden():
    assert set(BUDGET_KEYS) >= {"steps", "zca_placement", "local_layer", "train_budget"}
    assert Budget().with_overrides({k: None for k in ("epochs", "steps")}).to_dict()["arch"]


def test_an_epochs_override_replaces_the_train_budgets_steps():
    # (the ablation tests train a few steps: this is the pretraining config of their former
    # epochs=1 override of the demo train budget, which has 1200 steps)
    from collapsekit.experiments.ablation import train_config

    cfg = train_config(AblationConfig(overrides={"epochs": 1, "phantom_cases": 4}), "mocov2", 0)
    assert (cfg.epochs, cfg.steps, cfg.phantom_cases, cfg.phantom_validation) == (1, None, 4, None)
    assert cfg.final_samples == 0 and cfg.model.method == "mocov2"
    steps = train_config(AblationConfig(overrides={"steps": 4}), "local", 1)
    assert (steps.steps, steps.seed, steps.model.method) == (4, 1, "local")
