"""Cost accounting: the dispatch counter and the analytic walker against hand counts, the two
against each other for every registered cell, the seeds' reference table, activation memory and the
``convrnn cost`` command."""
import inspect
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convrnn
from convrnn import create_cell, create_model
from convrnn.cells.base import Cell
from convrnn.cli import main as cli
from convrnn.cost import (
    analytic_cell_cost,
    cell_cost,
    conv2d_macs,
    count_ops,
    format_table,
    model_cost,
    reference_table,
)
from convrnn.models.base import Predictor
from convrnn.registry import cell_entry

# -- the measured counter against hand counts ----------------------------------------------------


def test_conv_macs_plain_grouped_strided_transposed():
    x = torch.randn(2, 4, 9, 9)
    plain = nn.Conv2d(4, 6, 3, padding=1)
    assert count_ops(plain, x).macs == 2 * 9 * 9 * 3 * 3 * 4 * 6
    grouped = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)   # out 5x5, 2 input channels per group
    assert count_ops(grouped, x).macs == 2 * 5 * 5 * 3 * 3 * 2 * 6
    up = nn.ConvTranspose2d(4, 6, 3, stride=2)                      # every input pixel hits 9 x 6 outputs
    counts = count_ops(up, x)
    assert counts.macs == 2 * 9 * 9 * 4 * 6 * 9
    assert counts.products == 0 and counts.ops["aten.convolution"] == 1


def test_matrix_products_are_macs():
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    assert count_ops(torch.mm, a, b).macs == 3 * 4 * 5
    assert count_ops(torch.addmm, torch.randn(5), a, b).macs == 3 * 4 * 5
    p, q = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    assert count_ops(torch.bmm, p, q).macs == 2 * 3 * 4 * 5
    assert count_ops(torch.baddbmm, torch.randn(2, 3, 5), p, q).macs == 2 * 3 * 4 * 5
    assert count_ops(nn.Linear(4, 5), torch.randn(2, 3, 4)).macs == 2 * 3 * 4 * 5
    assert count_ops(torch.mv, a, torch.randn(4)).macs == 3 * 4
    assert count_ops(torch.dot, torch.randn(4), torch.randn(4)).macs == 4
    sdpa = count_ops(F.scaled_dot_product_attention, torch.randn(2, 5, 4), torch.randn(2, 6, 4), torch.randn(2, 6, 7))
    assert sdpa.macs == 2 * 5 * 6 * (4 + 7)   # q k^T and the weighting of v, as two bmm


def test_only_products_of_two_signals_count():
    x, y = torch.randn(2, 3, 4), torch.randn(2, 3, 4)

    def f():
        a = x * y                       # 24 products
        b = x * 2.0                     # scaling by a Python constant: none
        c = x * torch.tensor(3.0)       # by a one-element tensor: none
        d = x[:, :, :1] * y[:1, :1]     # broadcast (2,3,1) x (1,1,4): 24 products
        e = x.clone().mul_(y)           # in place: 24 products
        return torch.sigmoid(a + b + c + d + e)

    counts = count_ops(f)
    assert counts.products == 3 * 24
    assert counts.macs == 0
    assert counts.mults == 72
    assert counts.ops["aten.sigmoid"] == 1 and counts.ops["aten.mul"] == 4 and counts.ops["aten.mul_"] == 1


def test_grid_sample_bilinear_is_four_products_per_output():
    x, grid = torch.randn(2, 3, 5, 5), torch.rand(2, 4, 6, 2) * 2 - 1
    out_numel = 2 * 3 * 4 * 6
    assert count_ops(F.grid_sample, x, grid, align_corners=False).products == 4 * out_numel
    assert count_ops(F.grid_sample, x, grid, mode="nearest", align_corners=False).products == 0


# -- the analytic walker against hand counts -----------------------------------------------------


def test_conv2d_macs_uses_stride_padding_dilation():
    assert conv2d_macs(nn.Conv2d(2, 3, 3, padding=1), 6, 7) == 6 * 7 * 9 * 2 * 3
    assert conv2d_macs(nn.Conv2d(2, 3, 3, stride=2), 7, 9) == 3 * 4 * 9 * 2 * 3          # valid, stride 2
    assert conv2d_macs(nn.Conv2d(2, 3, 3, padding=2, dilation=2), 6, 7) == 6 * 7 * 9 * 2 * 3
    assert conv2d_macs(nn.Conv2d(2, 4, 1, groups=2, padding="valid"), 5, 5) == 25 * 1 * 4


CX, C, H, W = 3, 5, 6, 7
HW = H * W


@pytest.mark.parametrize("variant, had_blocks, rec_convs", [("conv", 0, 4), ("indconv", 3, 1), ("ind", 4, 0)])
@pytest.mark.parametrize("mode", ["position", "channel"])
def test_analytic_convlstm_by_hand(variant, had_blocks, rec_convs, mode):
    cell = create_cell("convlstm", in_channels=CX, channels=C, recurrent=variant, hadamard=mode, size=(H, W))
    per_weight = C * HW if mode == "position" else C
    params = 4 * 9 * CX * C + 4 * C + rec_convs * 9 * C * C + had_blocks * per_weight
    macs = HW * 9 * (4 * CX * C + rec_convs * C * C)
    mults = macs + had_blocks * C * HW + 3 * C * HW   # Hadamard products at the state size in both modes
    assert analytic_cell_cost(cell, H, W) == {"params": params, "mults": mults, "macs": macs}


def test_analytic_peephole_adds_three_products_per_state_element():
    plain = analytic_cell_cost(create_cell("convlstm", in_channels=CX, channels=C, size=(H, W)), H, W)
    peep = analytic_cell_cost(create_cell("convlstm", in_channels=CX, channels=C, size=(H, W), peephole=True), H, W)
    assert peep["params"] - plain["params"] == 3 * C * HW
    assert peep["mults"] - plain["mults"] == 3 * C * HW
    assert peep["macs"] == plain["macs"]


class _LinearCell(Cell):
    """A cell with a module the walker cannot size."""
    gating_products = 1

    def __init__(self):
        super().__init__(2, 2)
        self.proj = nn.Linear(2, 2)


class _HookCell(Cell):
    """A 2 -> 3 channel cell with a 3x3 convolution on a half-size map, a transposed convolution
    back, and matrix and elementwise products the walker cannot see, declared by its hooks."""
    gating_products = 2

    def __init__(self):
        super().__init__(2, 3)
        self.small = nn.Conv2d(2, 3, 3, padding=1)
        self.up = nn.ConvTranspose2d(3, 3, 4, stride=2, padding=1)
        self.full = nn.Conv2d(2, 3, 1)

    def map_sizes(self, height, width):
        return {self.small: (height // 2, width // 2), self.up: (height // 2, width // 2)}

    def extra_mults(self, height, width):
        return height * 1000 + width

    def extra_macs(self, height, width):
        return height * 100_000 + width * 10


def test_cost_hooks_size_maps_add_extra_products_and_opaque_modules_raise():
    h, w = 6, 4
    params = (3 * 2 * 9 + 3) + (3 * 3 * 16 + 3) + (3 * 2 + 3)
    macs = (3 * 2) * 9 * 2 * 3 + (3 * 2) * 16 * 3 * 3 + (6 * 4) * 1 * 2 * 3   # half, half (input), full
    macs += h * 100_000 + w * 10                                              # extra matrix products
    mults = macs + 2 * 3 * h * w + (h * 1000 + w)
    assert analytic_cell_cost(_HookCell(), h, w) == {"params": params, "mults": mults, "macs": macs}
    with pytest.raises(ValueError, match="_LinearCell.proj is a Linear.*extra_mults"):
        analytic_cell_cost(_LinearCell(), 3, 4)


# -- analytic == measured for every registered cell ----------------------------------------------


def _cases():
    cases = []
    for name in convrnn.list_cells():
        cls, fixed = cell_entry(name)
        if fixed:   # variant names and aliases: covered through their base name
            continue
        flags = [p.name for p in inspect.signature(cls.__init__).parameters.values() if isinstance(p.default, bool)]
        for variant in ("conv", "indconv", "ind"):
            for mode in ("position", "channel"):
                for flag in [None, *flags]:
                    kw = {flag: True} if flag else {}
                    cases.append(pytest.param(name, variant, mode, kw, id=f"{name}-{variant}-{mode}-{flag or 'plain'}"))
    return cases


@pytest.mark.parametrize("name, variant, mode, kw", _cases())
def test_analytic_equals_measured(name, variant, mode, kw):
    cell = create_cell(name, in_channels=4, channels=4, recurrent=variant, hadamard=mode, size=(8, 8), **kw)
    cost = cell_cost(cell, 8, 8, batch=2)
    assert cost["mults"] == cost["mults_measured"]
    assert cost["params"] == sum(p.numel() for p in cell.parameters())
    x = torch.randn(1, 4, 8, 8)
    m = torch.randn(1, 4, 8, 8) if cell.zigzag else None
    with torch.no_grad():
        assert count_ops(cell, x, None, m).macs == cost["macs"]


def test_the_seed_cells_are_registered():
    names = set(convrnn.list_cells())
    for base in ("convlstm", "convgru", "convjanet", "rgclstm", "gem"):
        assert {base, f"{base}_indconv", f"{base}_ind"} <= names


# -- the reference table (reference/cells.md §4) -------------------------------------------------

# cell, variant, params (K), mults (M), Δparams %, Δmults %  (reference/cells.md §4)
REFERENCE = [
    ("LSTM", "Conv", 295.2, 75.55, None, None),
    ("LSTM", "ConvIndConv", 233.7, 47.28, 20.8, 37.4),
    ("LSTM", "ConvInd", 213.2, 37.86, 27.8, 49.9),
    ("GRU", "Conv", 221.4, 56.67, None, None),
    ("GRU", "ConvIndConv", 180.4, 37.83, 18.5, 33.2),
    ("GRU", "ConvInd", 159.9, 28.41, 27.8, 49.9),
    ("JANET", "Conv", 147.6, 37.78, None, None),
    ("JANET", "ConvIndConv", 127.1, 28.36, 13.9, 24.9),
    ("JANET", "ConvInd", 106.6, 18.94, 27.8, 49.9),
]


@pytest.fixture(scope="module")
def table():
    return {(r["cell"], r["variant"]): r for r in reference_table()}


@pytest.mark.parametrize("cell, variant, params_k, mults_m, dparams, dmults", REFERENCE)
def test_reference_table_rows(table, cell, variant, params_k, mults_m, dparams, dmults):
    row = table[(cell, variant)]
    assert round(row["params"] / 1e3, 1) == params_k
    assert round(row["mults"] / 1e6, 2) == mults_m
    if dparams is None:
        assert row["dparams"] is None and row["dmults"] is None
    else:
        assert round(row["dparams"], 1) == dparams
        assert round(row["dmults"], 1) == dmults


def test_gem_counts_match_the_abstract(table):
    lstm, gem, gem_h = table[("LSTM", "Conv")], table[("GEM", "Conv")], table[("GEM", "ConvIndConv")]
    assert gem["params"] == lstm["params"] and gem["macs"] == lstm["macs"]
    assert gem["mults"] - lstm["mults"] == 64 * 16 * 16          # one more gating product than ConvLSTM
    assert round(gem_h["dparams"], 1) == 13.9
    assert gem_h["dmacs"] == pytest.approx(25.0)                  # 2 of the 8 convolutions
    chw, convs = 64 * 16 * 16, 8 * 16 * 16 * 9 * 64 * 64
    # 6 of 8 convolutions + 2 Hadamard gates + 4 gating products; the products dilute the -25%
    assert gem_h["mults"] == convs * 3 // 4 + (2 + 4) * chw
    assert round(gem_h["dmults"], 2) == 24.93


def test_format_table_is_markdown(table):
    text = format_table(list(table.values()))
    lines = text.splitlines()
    assert len(lines) == 2 + 12
    assert "| LSTM | ConvIndConv | 233.7 | 47.28 | 47.19 | 20.8% | 37.4% | 37.5% |" in lines
    assert "| GEM | Conv | 295.2 | 75.56 | 75.50 | – | – | – |" in lines


# -- whole models --------------------------------------------------------------------------------


def test_model_cost_of_a_stack_is_steps_times_cells_plus_readout():
    model = create_model("stack", cell="convlstm", layers=2, channels=4, frame_size=(8, 8), patch=2,
                         in_len=2, out_len=2)
    steps = model.in_len + model.out_len - 1
    cells = [analytic_cell_cost(c, 4, 4) for c in model.cells]
    readout = 4 * 4 * 4 * 4   # 1x1 conv 4 -> 4 channels on the 4x4 state
    cost = model_cost(model, batch=2)
    assert cost["params"] == sum(p.numel() for p in model.parameters())
    assert cost["macs"] == steps * (sum(c["macs"] for c in cells) + readout)
    assert cost["mults"] == steps * (sum(c["mults"] for c in cells) + readout)
    assert cost["activation_bytes"] > 0


class _Tiny(Predictor):
    """frames (B, T, 1, 4, 4) -> sigmoid(conv(frames)) * frames: saves frames, the conv output's
    sigmoid and the sigmoid again for the product (one storage, counted once)."""

    def __init__(self):
        super().__init__(frame_channels=1, frame_size=(4, 4), in_len=2, out_len=1)
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)

    def forward(self, frames, mask=None):
        assert mask is not None and mask.shape == (frames.shape[0], 2) and bool(mask.all())
        b, t = frames.shape[:2]
        x = frames.reshape(b * t, 1, 4, 4)
        s = torch.sigmoid(self.conv(x))
        return s * x


@pytest.mark.parametrize("batch", [1, 3])
def test_activation_bytes_by_hand(batch):
    cost = model_cost(_Tiny(), batch=batch)
    frames = 3 * 16 * 4                  # the input (view of the frames storage), float32, per sequence
    sigmoid = 3 * 16 * 4                 # sigmoid output, saved by sigmoid and by the product: once
    assert cost["activation_bytes"] == frames + sigmoid        # the conv weight is a parameter: excluded
    assert cost["macs"] == 3 * 16 * 9 and cost["mults"] == 3 * 16 * 9 + 3 * 16
    assert cost["params"] == 9


def test_model_cost_leaves_buffers_alone():
    model = _Tiny()
    model.norm = nn.BatchNorm2d(1)
    model.forward = lambda frames, mask: model.norm(frames.flatten(0, 1)) * 2
    model_cost(model, batch=2)
    assert torch.equal(model.norm.running_mean, torch.zeros(1))
    assert model.norm.num_batches_tracked.item() == 0


def test_model_cost_needs_a_predictor():
    with pytest.raises(ValueError, match="in_len"):
        model_cost(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="batch"):
        model_cost(_Tiny(), batch=0)


# -- the command ---------------------------------------------------------------------------------

CELL_ARGS = ["--channels", "4", "--in-channels", "2", "--height", "8", "--width", "6"]


def test_cli_cell_json(capsys):
    assert cli(["cost", "convlstm", "--variant", "indconv", "--hadamard", "channel", *CELL_ARGS, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    cell = create_cell("convlstm", in_channels=2, channels=4, recurrent="indconv", hadamard="channel")
    assert out == cell_cost(cell, 8, 6)
    assert list(out) == ["params", "mults", "mults_measured", "macs"]


@pytest.mark.parametrize("name", ["gem", "convgru", "convjanet", "rgclstm"])
def test_cli_cell_text(capsys, name):
    assert cli(["cost", name, "--variant", "ind", *CELL_ARGS]) == 0
    out = capsys.readouterr().out
    cell = create_cell(name, in_channels=2, channels=4, recurrent="ind", size=(8, 6))
    expected = analytic_cell_cost(cell, 8, 6)
    for key in ("params", "mults", "mults_measured", "macs"):
        assert key in out
    assert f"{expected['mults']:,d}" in out and f"{expected['params']:,d}" in out


def test_cli_defaults_are_the_reference_setting(capsys):
    assert cli(["cost", "convlstm", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 295168 and out["mults"] == out["mults_measured"] == 75546624


def _cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_cli_errors(capsys):
    assert "unknown cell 'nocell'" in _cli_error(capsys, ["cost", "nocell"])
    assert "invalid choice" in _cli_error(capsys, ["cost", "convlstm", "--variant", "hadamard"])
    assert "exactly one of" in _cli_error(capsys, ["cost"])
    assert "exactly one of" in _cli_error(capsys, ["cost", "convlstm", "--table"])
    assert "--batch applies to --config only" in _cli_error(capsys, ["cost", "convlstm", "--batch", "2"])
    assert "--in-channels must be positive" in _cli_error(capsys, ["cost", "convlstm", "--in-channels", "0"])
    assert "--channels must be positive" in _cli_error(capsys, ["cost", "convlstm", "--channels", "0"])
    assert "fixes ['recurrent']" in _cli_error(capsys, ["cost", "convlstm_ind", "--variant", "conv"])
    assert "in_channels (2) must equal channels" in _cli_error(capsys, ["cost", "motionrnn", *CELL_ARGS])


def test_cli_table(capsys):
    assert cli(["cost", "--table"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == format_table(reference_table())
    assert "| JANET | ConvIndConv | 127.1 | 28.36 |" in out


NET = {"name": "stack", "cell": "convgru", "layers": 1, "channels": 3, "frame_size": [8, 8], "in_len": 2, "out_len": 2}


@pytest.mark.parametrize("layout", ["training", "direct"])
def test_cli_config(tmp_path, capsys, layout):
    import yaml
    model = {"net": NET, "loss": "mse"} if layout == "training" else NET
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"seed_everything": 1, "model": model}))
    assert cli(["cost", "--config", str(path), "--batch", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    torch.manual_seed(0)
    expected = model_cost(convrnn.model_from_config(NET), batch=2)
    assert list(out) == ["params", "macs", "mults", "activation_bytes"]
    assert {k: out[k] for k in ("params", "macs", "mults")} == {k: expected[k] for k in ("params", "macs", "mults")}
    assert out["activation_bytes"] == expected["activation_bytes"]


def test_cli_config_errors(tmp_path, capsys):
    assert "not found" in _cli_error(capsys, ["cost", "--config", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {max_epochs: 1}\n")
    assert "'model:' section" in _cli_error(capsys, ["cost", "--config", str(bad)])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model: {name: nomodel}\n")
    assert "unknown model 'nomodel'" in _cli_error(capsys, ["cost", "--config", str(unknown)])


def test_docs_hold_the_table_the_command_prints():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "cost.md").read_text()
    assert format_table(reference_table()) in doc
    assert "convrnn cost --table" in doc
