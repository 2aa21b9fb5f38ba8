"""The composite encoder / predictor / reconstructor model of seed 003 (reference/msrnn.md §4)."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from convrnn import create_model, list_cells, model_from_config
from convrnn.loop import phase_mask, unroll
from convrnn.models.composite import CompositeModel
from helpers import dead_blocks

IN, OUT = 3, 2
C = 4                       # channels of every recurrent layer in tiny()
CELLS = [c for c in ("convlstm", "convgru", "convjanet", "gem", "rgclstm", "predrnn") if c in list_cells()]
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "seed003"


def tiny(**kw) -> CompositeModel:
    base = {"cell": "convlstm", "layers": 2, "channels": C, "frame_size": (16, 16), "in_len": IN,
            "out_len": OUT, "codec_channels": (4, 6, 8)}
    base.update(kw)
    return create_model("composite", **base)


def frames(b=2, t=IN + OUT):
    return torch.rand(b, t, 1, 16, 16)


def test_shapes_and_reversed_targets():
    m = tiny()
    x = frames()
    p = m(x)
    assert p.future.shape == (2, OUT, 1, 16, 16)
    assert p.outputs.shape == (2, OUT + IN, 1, 16, 16)
    assert torch.equal(p.outputs[:, :OUT], p.future)
    # targets: the future frames, then the inputs most recent first
    assert torch.equal(p.targets[:, :OUT], x[:, IN:])
    assert torch.equal(p.targets[:, OUT:], torch.stack([x[:, 2], x[:, 1], x[:, 0]], 1))
    assert ((p.outputs > 0) & (p.outputs < 1)).all()  # sigmoid output
    assert p.aux == {}
    assert m(x[:, :IN]).targets is None
    assert m(x[:, :IN]).outputs.shape == (2, OUT + IN, 1, 16, 16)


def test_without_reconstructor():
    m = tiny(reconstruct=False)
    assert not hasattr(m, "reconstructor")
    x = frames()
    p = m(x)
    assert p.outputs.shape == (2, OUT, 1, 16, 16)
    assert torch.equal(p.targets, x[:, IN:])


def test_codec_against_hand_computation():
    m = tiny().eval()
    enc, dec = m.frame_encoder, m.predictor_decoder
    with torch.no_grad():
        for bn in (enc[2], enc[5], enc[8], dec[2], dec[5]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    x = torch.rand(2, 1, 16, 16)

    def bn(y, mod):
        return (y - mod.running_mean[:, None, None]) / torch.sqrt(mod.running_var[:, None, None] + mod.eps) \
            * mod.weight[:, None, None] + mod.bias[:, None, None]

    # encoder: conv 5x5 s2 -> ReLU -> BN, conv 3x3 s1 -> ReLU -> BN, conv 3x3 s2 -> ReLU -> BN
    y = bn(F.relu(F.conv2d(x, enc[0].weight, enc[0].bias, stride=2, padding=2)), enc[2])
    y = bn(F.relu(F.conv2d(y, enc[3].weight, enc[3].bias, stride=1, padding=1)), enc[5])
    y = bn(F.relu(F.conv2d(y, enc[6].weight, enc[6].bias, stride=2, padding=1)), enc[8])
    assert y.shape == (2, 8, 4, 4)
    assert torch.allclose(enc(x), y, atol=1e-5)
    # decoder: deconv 3x3 s2 -> ReLU -> BN, deconv 3x3 s1 -> ReLU -> BN, deconv 5x5 s2 -> sigmoid
    h = torch.randn(2, 4, 4, 4)
    z = bn(F.relu(F.conv_transpose2d(h, dec[0].weight, dec[0].bias, stride=2, padding=1, output_padding=1)), dec[2])
    z = bn(F.relu(F.conv_transpose2d(z, dec[3].weight, dec[3].bias, stride=1, padding=1)), dec[5])
    z = torch.sigmoid(F.conv_transpose2d(z, dec[6].weight, dec[6].bias, stride=2, padding=2, output_padding=1))
    assert z.shape == (2, 1, 16, 16)
    assert torch.allclose(dec(h), z, atol=1e-5)
    assert [dec[0].out_channels, dec[3].out_channels] == [6, 4]  # mirrored widths


def run_by_hand(m: CompositeModel, x, mask):
    """The composite's data flow written out step by step with the model's own modules."""
    def run(cells, inp, state):
        layer_states = state or [None] * len(cells.cells)
        new = []
        for cell, s in zip(cells.cells, layer_states):
            inp, s, _ = cell(inp, s)
            new.append(s)
        return inp, new

    enc = m.frame_encoder
    state = None
    for t in range(IN):                                  # encoder reads x_0 .. x_{n-1}
        _, state = run(m.encoder, enc(x[:, t]), state)
    zero = torch.zeros(x.shape[0], 8, 4, 4)
    future, s, prev = [], state, x[:, IN - 1]            # predictor: step 0 fed x_{n-1}
    for j in range(OUT):
        if j > 0:
            t = IN - 1 + j
            prev = torch.where(mask[:, t, None, None, None], x[:, t], future[-1])
        inp = enc(prev) if m.conditional_predictor else zero
        h, s = run(m.predictor, inp, s)
        future.append(m.predictor_decoder(h))
    recon, s = [], state                                 # reconstructor: step 0 blank, step j fed x_{n-j}
    for j in range(IN):
        if j == 0 or not m.conditional_reconstructor:
            inp = zero
        else:
            t = IN - j
            inp = enc(torch.where(mask[:, t, None, None, None], x[:, t], recon[-1]))
        h, s = run(m.reconstructor, inp, s)
        recon.append(m.reconstructor_decoder(h))
    return torch.stack(future, 1), torch.stack(recon, 1)


@pytest.mark.parametrize("cond_p,cond_r", [(True, True), (False, False), (True, False)])
def test_data_flow_against_hand_loop(cond_p, cond_r):
    m = tiny(conditional_predictor=cond_p, conditional_reconstructor=cond_r).eval()
    x = frames()
    mask = torch.tensor([[True, False, True, False], [True, True, False, True]])
    p = m(x, mask)
    future, recon = run_by_hand(m, x, mask)
    assert torch.allclose(p.future, future, atol=1e-6)
    assert torch.allclose(p.outputs[:, OUT:], recon, atol=1e-6)


def test_unconditioned_predictor_ignores_future_frames_even_with_teacher_forcing():
    x = frames(1)
    y = x.clone()
    y[:, IN:] = torch.rand(1, OUT, 1, 16, 16)
    tf = torch.ones(1, IN + OUT - 1, dtype=torch.bool)
    m = tiny(conditional_predictor=False).eval()
    assert torch.equal(m(x, tf).future, m(y, tf).future)
    c = tiny(conditional_predictor=True).eval()
    assert not torch.allclose(c(x, tf).future, c(y, tf).future)   # fed the ground-truth future
    assert torch.equal(c(x).future, c(y).future)                   # test time: fed its own outputs
    assert torch.equal(c(x, tf).future[:, 0], c(y, tf).future[:, 0])  # step 0 sees x_{n-1} only


def test_reconstructor_feeding_follows_input_phase_mask_entries():
    x = frames()
    gt = torch.ones(2, IN + OUT - 1, dtype=torch.bool)
    own = gt.clone()
    own[:, 1:IN] = False  # the reconstructor feeds back its own outputs instead of x_{n-1} .. x_1
    for cond in (True, False):
        m = tiny(conditional_reconstructor=cond).eval()
        a, b = m(x, gt).outputs, m(x, own).outputs
        assert torch.equal(a[:, :OUT + 1], b[:, :OUT + 1])  # predictor, and reconstructor step 0 (blank)
        assert torch.equal(a[:, OUT + 1:], b[:, OUT + 1:]) != cond


def test_encoder_state_reaches_both_decoders():
    m = tiny(conditional_predictor=False, conditional_reconstructor=False).eval()
    x = frames(1)
    y = x.clone()
    y[:, 0] = torch.rand(1, 1, 16, 16)  # an early input: only the encoder's state carries it
    px, py = m(x), m(y)
    assert not torch.equal(px.future, py.future)
    assert not torch.equal(px.outputs[:, OUT:], py.outputs[:, OUT:])


def test_decoders_start_from_encoder_final_state():
    m = tiny().eval()
    x = frames(1)
    seen = {}
    for name in ("predictor", "reconstructor"):
        part = getattr(m, name)
        part.forward = lambda inp, s, f=part.forward, n=name: (seen.setdefault(n, s), f(inp, s))[1]
    m(x)
    _, final = unroll(m._encode_step, None, x[:, :IN], IN)
    for name in ("predictor", "reconstructor"):
        for got, want in zip(seen[name].layers, final.layers):
            assert all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("variant", ["conv", "indconv"])
def test_any_cell_gradients_reach_every_block(cell, variant):
    m = tiny(cell=cell, layers=2, cell_kw={"recurrent": variant}, conditional_reconstructor=True)
    x = frames()
    mask = torch.ones(2, IN + OUT - 1, dtype=torch.bool)
    p = m(x, mask)
    F.mse_loss(p.outputs, p.targets).backward()
    assert not dead_blocks(m, C), f"no gradient reaches {dead_blocks(m, C)}"
    assert m.encoder.cells[0].size == (4, 4)  # cells run at the encoded resolution


def test_separate_weights_for_encoder_predictor_reconstructor():
    m = tiny()
    ids = [{id(q) for q in part.parameters()} for part in
           (m.encoder, m.predictor, m.reconstructor, m.predictor_decoder, m.reconstructor_decoder)]
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            assert not ids[i] & ids[j]


def test_errors():
    with pytest.raises(ValueError, match="not divisible by 4.*smallest valid size is 20x20"):
        tiny(frame_size=(18, 18))
    m = tiny()
    with pytest.raises(ValueError, match=r"mask must be a \(B, in_len \+ out_len - 1\)"):
        m(frames(), torch.ones(2, IN + OUT, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        m(frames(), torch.ones(2, IN + OUT - 1))
    with pytest.raises(ValueError, match="in_len"):
        m(frames(t=IN - 1))
    with pytest.raises(ValueError, match="codec_channels needs 3 widths"):
        tiny(codec_channels=(4, 8))
    with pytest.raises(ValueError, match="need 2 cell names"):
        tiny(cell=["convlstm"])


def test_phase_mask_default_feeds_reconstructor_the_inputs():
    m = tiny(conditional_reconstructor=True).eval()
    x = frames()
    assert torch.equal(m(x).outputs, m(x, phase_mask(2, IN, OUT)).outputs)


# -- seed 003 configs: the §4 counting setting ------------------------------------------------
# cells.md §4: recurrent-cell parameters at C_x = C = 64, k = 3, 16x16, per-position Hadamard.
CELL_PARAMS = {"convlstm_conv": 295_168, "convlstm_indconv": 233_728, "convlstm_ind": 213_248,
               "convgru_conv": 221_376, "convgru_indconv": 180_416, "convgru_ind": 159_936,
               "convjanet_conv": 147_584, "convjanet_indconv": 127_104, "convjanet_ind": 106_624,
               "gem": 295_168, "gem_indconv": 254_208}


@pytest.mark.parametrize("stem", sorted(CELL_PARAMS))
def test_seed003_configs_build_in_the_counting_setting(stem):
    cfg = yaml.safe_load((CONFIGS / f"{stem}.yaml").read_text())
    net = cfg["model"]["net"]
    assert net["name"] == "composite" and net["frame_size"] == [64, 64]
    assert (net["in_len"], net["out_len"], net["channels"], net["kernel"]) == (10, 10, 64, 3)
    assert cfg["model"]["schedule"] == {"name": "inverse_sigmoid", "a": 1000}
    assert cfg["model"]["per_sample_mask"] is False
    m = model_from_config(net)
    assert isinstance(m, CompositeModel) and m.state_size == (16, 16)
    cell = m.encoder.cells[0]
    assert (cell.in_channels, cell.channels, cell.size) == (64, 64, (16, 16))
    assert sum(q.numel() for q in cell.parameters()) == CELL_PARAMS[stem]


def test_seed003_config_set_is_complete():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(CELL_PARAMS)
