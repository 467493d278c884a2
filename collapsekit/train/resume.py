"""What ``--resume`` may change: the one policy for continuing a run from its checkpoint.

A run's training settings are fixed when it starts: resuming takes them from the checkpoint. What
the user sets explicitly on resume is compared with them:

* a training setting that differs from the saved one (``--method``, ``--batch-size``,
  ``--image-size``, a ``[model]`` key, ...) is refused, naming each conflict: silently ignoring
  it trained something other than what was asked;
* ``steps`` (or ``epochs``) larger than the saved schedule **extends** the run (the cosine schedule
  is stretched to the new length from the current step); smaller is refused;
* runtime settings (:data:`RUNTIME_FIELDS`: workers, device, cache, stop/checkpoint cadence) may
  change; each change is reported;
* settings not given keep their saved values (the *default* ``--workers`` no longer replaces the
  saved one), except ``stop_after``, which belongs to the session that set it.

A run whose checkpoint is at its last step is finished: resuming it without extending it writes
nothing (:attr:`ResumePlan.already_finished`).

"Given explicitly" is what the CLI passes (the flags the user typed, the keys of a ``--config``
file); a library caller that passes a whole :class:`~collapsekit.train.config.TrainConfig` gives
the fields that differ from ``TrainConfig()``'s defaults (:func:`explicit_fields`).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collapsekit.errors import ConfigError
from collapsekit.train.config import (
    TrainConfig,
    budget_overrides,
    config_from_dict,
    config_to_dict,
)

__all__ = ["RUNTIME_FIELDS", "ResumePlan", "explicit_fields", "given_settings", "plan_resume"]

#: Settings that change how, not what, a run trains: they may differ on resume.
RUNTIME_FIELDS = (
    "stop_after",
    "num_workers",
    "device",
    "checkpoint_every",
    "cache_dir",
    "preprocess_workers",
    "cache_direct_io",
    "compile",
)
#: Settings that set the schedule's length: larger values extend a run.
_LENGTH_FIELDS = ("steps", "epochs")


@dataclass(frozen=True)
class ResumePlan:
    """How a run continues.

    Attributes:
        config: the effective configuration (the saved one, runtime changes and an extension applied).
        step: the checkpoint's step.
        total_steps: the schedule length the run now has.
        already_finished: the checkpoint is at ``total_steps``: nothing to train or write.
        changes: one line per runtime setting or schedule length that differs from the saved run.
    """

    config: TrainConfig
    step: int
    total_steps: int
    already_finished: bool
    changes: tuple[str, ...]


def _flat(cfg: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in cfg.items() if k != "model"}
    out.update({f"model.{k}": v for k, v in (cfg.get("model") or {}).items()})
    return out


def given_settings(
    flags: Mapping[str, Any], config_file: str | Path | None = None, budget: str | None = None
) -> dict[str, Any]:
    """What the user set explicitly, flat: a ``--budget``'s settings, then a ``--config`` file's
    keys, then the flags that are not ``None`` (``flags`` may hold ``model`` as a dict).
    Call it after the config file was read by :func:`~collapsekit.train.config.load_config`."""
    given: dict[str, Any] = {}
    if budget:
        given.update(_flat(budget_overrides(budget)))
    if config_file is not None:
        given.update(_flat(tomllib.loads(Path(config_file).read_text())))
    given.update({k: v for k, v in _flat(flags).items() if v is not None})
    return given


def explicit_fields(cfg: TrainConfig) -> dict[str, Any]:
    """The fields of ``cfg`` that differ from ``TrainConfig()`` (``model.x`` for model fields).

    A ZCA group size equal to the one the automatic rule (``zca_group_size = 0``) chooses for
    ``cfg``'s batch and image size is derived, not given, and is left out.
    """
    default, mine = _flat(config_to_dict(TrainConfig())), _flat(config_to_dict(cfg))
    given = {k: v for k, v in mine.items() if default.get(k) != v}
    if "model.zca_group_size" in given:
        auto = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, zca_group_size=0))
        if auto.model.zca_group_size == cfg.model.zca_group_size:
            del given["model.zca_group_size"]
    return given


def _fitted_queue(key: str, value: Any, saved: TrainConfig) -> bool:
    """A queue size the run asked for and trained with less of: ``fit_queue`` shrank it to
    ``N/4`` (:func:`~collapsekit.train.builders.fit_queue`), so asking for it again agrees."""
    return (
        key == "model.queue_size"
        and saved.fit_queue
        and isinstance(value, int)
        and value > saved.model.queue_size
    )


def plan_resume(
    saved: Mapping[str, Any], step: int, total_steps: int, given: Mapping[str, Any]
) -> ResumePlan:
    """Combine a checkpoint's config with the settings given explicitly on resume.

    Args:
        saved: the checkpoint's ``config`` (plain data).
        step, total_steps: the checkpoint's step and schedule length.
        given: settings the user gave explicitly, flat (``"batch_size"``, ``"model.method"``);
            ``None`` values are ignored.

    Raises:
        ConfigError: a training setting that conflicts with the saved run (every conflict named),
            or a schedule shorter than the steps already trained.
    """
    base = config_from_dict(dict(saved))
    saved_flat = _flat(config_to_dict(base))
    given = {k: v for k, v in given.items() if v is not None}
    unknown = sorted(set(given) - set(saved_flat))
    if unknown:
        raise ConfigError(f"unknown setting(s) on resume: {', '.join(unknown)}")
    conflicts = [
        f"{k} {given[k]!r} (the run has {saved_flat[k]!r})"
        for k in sorted(given)
        if k not in RUNTIME_FIELDS
        and k not in _LENGTH_FIELDS
        and given[k] != saved_flat[k]
        and not _fitted_queue(k, given[k], base)
    ]
    if conflicts:
        raise ConfigError(
            "--resume continues a run with its saved settings; these differ: "
            + "; ".join(conflicts)
            + ". Drop them, or start a new run with another --out"
        )
    new_total = total_steps
    if given.get("steps") is not None:
        new_total = int(given["steps"])
    elif given.get("epochs") is not None and base.steps is None and base.epochs:
        new_total = int(given["epochs"]) * (total_steps // base.epochs)
    if new_total < step:
        raise ConfigError(
            f"the run has trained {step} steps already; a schedule of {new_total} steps cannot "
            "continue it (give more steps, or start a new run)"
        )
    changes = []
    runtime = {k: given[k] for k in RUNTIME_FIELDS if k in given}
    for k, v in runtime.items():
        if v != saved_flat[k]:
            changes.append(f"{k}: {v!r} for this session (the run had {saved_flat[k]!r})")
    # stop_after belongs to the session that set it: not given, the resumed session runs to the end
    replace: dict[str, Any] = {**runtime, "stop_after": given.get("stop_after")}
    if new_total != total_steps:
        replace["steps"] = new_total
        changes.append(f"schedule extended from {total_steps} to {new_total} steps")
    cfg = dataclasses.replace(base, **replace)
    return ResumePlan(
        config=cfg,
        step=int(step),
        total_steps=new_total,
        already_finished=step >= new_total,
        changes=tuple(changes),
    )
