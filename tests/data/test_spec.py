"""data.spec: the phantom's definition and the one evaluation phantom."""

from __future__ import annotations

import pytest

from collapsekit.data import PhantomConfig, eval_phantom
from collapsekit.data.spec import EVAL_PHANTOM_SEED, default_validation_cases, phantom_case_seed
from collapsekit.errors import ConfigError


def test_eval_phantom_is_the_phantom_with_the_evaluation_seed():
    cfg = eval_phantom(cases=9, size=32, slices=6)
    assert cfg == PhantomConfig(cases=9, size=32, slices=6, seed=EVAL_PHANTOM_SEED)
    assert cfg.validation_cases == default_validation_cases(9) == 3
    assert eval_phantom(cases=5, validation=0).training_cases == 5
    assert eval_phantom() == PhantomConfig(seed=EVAL_PHANTOM_SEED)


def test_eval_cases_are_never_pretraining_cases():
    # case seeds are seed * 100_000 + i: the evaluation block [10^9, 10^9 + 10^5) lies above
    # every pretraining block of a seed below EVAL_PHANTOM_SEED
    lowest_eval = phantom_case_seed(EVAL_PHANTOM_SEED, 0)
    assert lowest_eval == 10**9
    assert phantom_case_seed(EVAL_PHANTOM_SEED - 1, 99_999) < lowest_eval
    assert phantom_case_seed(0, 11) not in {
        phantom_case_seed(EVAL_PHANTOM_SEED, i) for i in range(48)
    }


def test_eval_phantom_validates_like_phantom_config():
    with pytest.raises(ConfigError, match="validation"):
        eval_phantom(cases=3, validation=3)
    with pytest.raises(ConfigError, match="size"):
        eval_phantom(size=4)


@pytest.mark.parametrize(("cases", "expected"), [(1, 0), (2, 1), (3, 1), (9, 3), (12, 4), (48, 4)])
def test_default_validation_cases(cases, expected):
    assert default_validation_cases(cases) == expected
