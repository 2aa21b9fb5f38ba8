"""docs/architecture.md's worked example of adding a cell is true: the code block, written as the
file it shows, registers a cell that works in every arrangement and in the cost counter."""
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from helpers import one_thread  # noqa: F401  (autouse fixture)

from convrnn import create_cell, create_model, registry
from convrnn.cost import cell_cost

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


@pytest.fixture
def example_cell():
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]
    module = types.ModuleType("convrnn.cells.nooglstm")
    module.__package__ = "convrnn.cells"
    sys.modules[module.__name__] = module
    before = dict(registry._CELLS)
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    yield module
    registry._CELLS.clear()
    registry._CELLS.update(before)
    del sys.modules[module.__name__]


def test_the_documented_cell_works_everywhere(example_cell):
    cell = create_cell("nooglstm_indconv", in_channels=3, channels=4, size=(8, 8))
    x = torch.randn(2, 3, 8, 8)
    h, state, m = cell(x)
    assert h.shape == (2, 4, 8, 8) and state.h is h and m is None
    i, f, g = (cell.wx(x) + cell.uh(torch.zeros(2, 4, 8, 8))).chunk(3, 1)
    torch.testing.assert_close(h, torch.tanh(torch.sigmoid(i) * torch.tanh(g)))   # c_0 = 0
    cost = cell_cost(cell, 8, 8)
    assert cost["mults"] == cost["mults_measured"]
    for name, kw in (("stack", {}), ("msrnn", {"layers": 3, "scales": (1, 0.5, 1)}),
                     ("composite", {"codec_channels": (4, 4, 4)})):
        model = create_model(name, cell="nooglstm", channels=4, frame_size=(16, 16), in_len=2, out_len=2, **kw)
        assert model(torch.rand(1, 4, 1, 16, 16)).future.shape == (1, 2, 1, 16, 16)
