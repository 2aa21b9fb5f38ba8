"""Every network computes what it computed before the one-way refactor of issue 9 (cells with one
signature, presets moved to models/, TrajGRU's projection folded into RecurrentOp, shared warp).

``tests/data/networks_before_one_way_refactor.pt`` was written by
``tests/data/make_networks_before_one_way_refactor.py`` on the code before that change: for every
cell x variant in a 2-layer stack, MS pyramids, the presets and the composite model, random weights,
frames, a scheduled-sampling mask, the teacher-forced outputs and the free-running future.  Loading
those state dicts (same keys, strict) into today's networks must reproduce both exactly."""
from pathlib import Path

import pytest
import torch
from helpers import one_thread  # noqa: F401  (autouse fixture)

from convrnn import model_from_config

SAVED = torch.load(Path(__file__).parent / "data" / "networks_before_one_way_refactor.pt", weights_only=True)


@pytest.mark.parametrize("key", sorted(SAVED))
def test_network_reproduces_its_outputs_from_before_the_refactor(key):
    case = SAVED[key]
    model = model_from_config(case["config"]).eval()
    model.load_state_dict(case["state_dict"], strict=True)
    with torch.no_grad():
        pred = model(case["frames"], case["mask"])
        free = model(case["frames"][:, :case["config"]["in_len"]])
    torch.testing.assert_close(pred.outputs, case["outputs"], rtol=0, atol=1e-6)
    torch.testing.assert_close(free.future, case["future"], rtol=0, atol=1e-6)
    assert sorted(pred.aux) == sorted(case["aux"])
    for name, value in case["aux"].items():
        torch.testing.assert_close(pred.aux[name], value, rtol=0, atol=1e-6)


def test_the_snapshot_covers_every_cell_family_and_model():
    cells = {c if isinstance(c, str) else c[-1] for case in SAVED.values() for c in [case["config"].get("cell")]
             if c is not None}
    assert {"convlstm", "convgru", "convjanet", "rgclstm", "gem", "predrnn", "predrnnpp", "predrnnv2", "mim",
            "motionrnn", "trajgru", "preciplstm"} <= cells
    assert {"stack", "msrnn", "composite", "predrnnpp", "predrnnv2", "mim", "motionrnn"} <= \
        {case["config"]["name"] for case in SAVED.values()}
