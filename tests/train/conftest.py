"""One micro-recipe run of the whole pipeline, shared by the tests of this folder."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """``m3 train all --recipe micro`` (ground-truth experts for the small evaluation) in a temp folder."""
    from vlm.train.pipeline import run_all
    from vlm.train.recipes import get_recipe

    out = tmp_path_factory.mktemp("micro")
    final = run_all(get_recipe("micro"), out, experts="truth", progress=False)
    return out, final
