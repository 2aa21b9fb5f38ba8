import pytest
import torch
import torch.nn.functional as F

from convrnn import create_model
from convrnn.models.stack import default_scales, skip_sets, skip_sources
from helpers import check_free_run_by_hand, dead_blocks, randomize


def tiny(name="stack", **kw):
    base = {"cell": "convlstm", "layers": 2, "channels": 4, "frame_size": (16, 16), "in_len": 3, "out_len": 2}
    base.update(kw)
    return create_model(name, **base)


def test_stack_shapes_and_targets():
    m = tiny()
    x = torch.rand(2, 5, 1, 16, 16)
    p = m(x)
    assert p.outputs.shape == (2, 4, 1, 16, 16)
    assert p.future.shape == (2, 2, 1, 16, 16)
    assert torch.equal(p.targets, x[:, 1:5])
    assert torch.equal(p.future, p.outputs[:, 2:])
    assert m(x[:, :3]).targets is None


def test_future_independent_of_unseen_frames_without_teacher_forcing():
    m = tiny()
    x = torch.rand(1, 5, 1, 16, 16)
    y = x.clone()
    y[:, 3:] = torch.rand(1, 2, 1, 16, 16)
    assert torch.allclose(m(x).future, m(y).future)
    tf = torch.ones(1, 4, dtype=torch.bool)
    assert not torch.allclose(m(x, tf).future, m(y, tf).future)


def test_msrnn_pyramid_sizes_skips_and_equal_params():
    kw = {"cell": "convlstm", "channels": 4, "frame_size": (16, 16), "in_len": 2, "out_len": 1}
    flat = create_model("stack", layers=6, **kw)
    ms = create_model("msrnn", **kw)
    assert ms.sizes == [(16, 16), (8, 8), (4, 4), (4, 4), (8, 8), (16, 16)]
    assert ms.skips == [None, None, None, None, 1, 0]
    assert sum(p.numel() for p in flat.parameters()) == sum(p.numel() for p in ms.parameters())
    # docs/models.md §4: layers 5 and 6 add the outputs of layers 2 and 1 (0-based: 4 <- 1, 5 <- 0)
    sizes = [(16, 16), (8, 8), (4, 4), (4, 4), (8, 8), (16, 16)]
    pred = check_free_run_by_hand(randomize(ms, 0.3), sizes, [(), (), (), (), (1,), (0,)], channels=4,
                                  frames=torch.rand(2, 3, 1, 16, 16))
    assert pred.outputs.shape == (2, 2, 1, 16, 16)


def test_msrnn_rejects_indivisible_size_naming_smallest_valid():
    with pytest.raises(ValueError, match="smallest valid size is 20x20"):
        create_model("msrnn", cell="convlstm", channels=4, frame_size=(18, 18))


@pytest.mark.parametrize("layers, scales", [
    (6, (1, 1 / 2, 1 / 4, 1 / 4, 1 / 2, 1)),     # MS-RNN's pyramid (docs/models.md §4)
    # other depths, by the rule: down by 2 until 1/4, flat, then back up the same way
    (2, (1, 1)), (3, (1, 1 / 2, 1)), (4, (1, 1 / 2, 1 / 2, 1)), (5, (1, 1 / 2, 1 / 4, 1 / 2, 1)),
    (8, (1, 1 / 2, 1 / 4, 1 / 4, 1 / 4, 1 / 4, 1 / 2, 1)),
])
def test_default_scales_are_ms_rnns_pyramid(layers, scales):
    assert default_scales(layers) == scales
    model = create_model("msrnn", layers=layers, cell="convlstm", channels=2, frame_size=(16, 16))
    assert model.scales == scales


# pyramids whose skips differ between searching the earlier layers backward (the nearest mirror
# layer, the rule) and forward (the first one at that scale): 0-based source per layer, by hand
VALID_PYRAMIDS = [
    ((1, 0.5, 1, 0.5, 1), [None, None, 0, None, 2]),
    ((1, 0.5, 0.25, 0.5, 0.25, 0.5, 1), [None, None, None, 1, None, 3, 0]),
]


@pytest.mark.parametrize("scales, sources", VALID_PYRAMIDS)
def test_skip_comes_from_the_nearest_earlier_layer_at_that_scale(scales, sources):
    assert skip_sources(scales) == sources
    assert skip_sets(scales, "add") == [() if j is None else (j,) for j in sources]
    model = randomize(create_model("stack", cell="convlstm", layers=len(scales), channels=4,
                                   frame_size=(16, 16), in_len=2, out_len=2, scales=scales), 0.3)
    sizes = [(int(16 * s), int(16 * s)) for s in scales]
    check_free_run_by_hand(model, sizes, [() if j is None else (j,) for j in sources],
                           frames=torch.rand(2, 4, 1, 16, 16))


def test_skip_none():
    assert skip_sources((1, 0.5, 0.25, 0.25, 0.5, 1), "none") == [None] * 6


def test_bad_frames_errors():
    m = tiny()
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        m(torch.rand(5, 1, 16, 16))
    with pytest.raises(ValueError, match="frame_size"):
        m(torch.rand(1, 5, 1, 32, 32))
    with pytest.raises(ValueError, match="in_len"):
        m(torch.rand(1, 2, 1, 16, 16))


# -- skip modes beyond 'add' / 'none' ------------------------------------------------------------
MS6 = (1, 0.5, 0.25, 0.25, 0.5, 1)


def test_skip_sets_match_the_reference_ablations():
    # MS-RNN's reference code (0-based layers): UNet3+ adds P4 h0 + P2 h1 into layer 3,
    # P2 h0 + h1 into layer 4, h0 + U4 h3 into layer 5; fully connected adds every earlier output.
    assert skip_sets(MS6, "unet3p") == [(), (), (), (0, 1), (0, 1), (0, 3)]
    assert skip_sets(MS6, "dense") == [(), (), (0,), (0, 1), (0, 1, 2), (0, 1, 2, 3)]
    assert skip_sets(MS6, "add") == [(), (), (), (), (1,), (0,)]
    assert skip_sets(MS6, "none") == [()] * 6
    assert skip_sets((1, 0.5, 0.5, 1), "unet3p") == [(), (), (0,), (0,)]
    with pytest.raises(ValueError, match="choose one of"):
        skip_sets(MS6, "concat")
    with pytest.raises(ValueError, match="use skip_sets"):
        skip_sources(MS6, "dense")


@pytest.mark.parametrize("skip", ["unet3p", "dense"])
def test_multi_source_skips_inputs_params_and_gradients(skip):
    kw = {"cell": "convlstm", "channels": 4, "frame_size": (16, 16), "in_len": 2, "out_len": 1}
    flat = create_model("stack", layers=6, **kw)
    ms = create_model("msrnn", skip=skip, **kw)
    assert sum(p.numel() for p in flat.parameters()) == sum(p.numel() for p in ms.parameters())
    assert ms.skip_from == skip_sets(MS6, skip) and ms.skips is None
    inputs, outputs = {}, {}

    def record(l):
        def hook(mod, args, out):  # first step only
            inputs.setdefault(l, args[0])
            outputs.setdefault(l, out[0])
        return hook

    for l, cell in enumerate(ms.cells):
        cell.register_forward_hook(record(l))
    out = ms(torch.rand(2, 3, 1, 16, 16)).outputs
    sizes = [16, 8, 4, 4, 8, 16]

    def to(x, s):  # MS-RNN's P (max-pool) and U (bilinear) by hand
        if x.shape[-1] > s:
            return F.max_pool2d(x, x.shape[-1] // s)
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False) if x.shape[-1] < s else x

    for l in range(1, 6):
        want = to(outputs[l - 1], sizes[l]) + sum(to(outputs[j], sizes[l]) for j in skip_sets(MS6, skip)[l])
        assert torch.allclose(inputs[l], want, atol=1e-6), l
    out.square().sum().backward()
    assert not dead_blocks(ms, 4), f"no gradient reaches {dead_blocks(ms, 4)}"


def test_skip_channel_mismatch_error():
    with pytest.raises(ValueError, match="needs equal channel counts"):
        create_model("msrnn", cell="convlstm", layers=4, channels=[4, 4, 6, 4], frame_size=(16, 16),
                     skip="dense")


def test_pyramid_must_end_at_full_scale():
    with pytest.raises(ValueError, match="must be at scale 1"):
        create_model("stack", cell="convlstm", layers=2, channels=4, frame_size=(16, 16), scales=(1, 0.5))
