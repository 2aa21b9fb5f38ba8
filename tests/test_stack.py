import pytest
import torch

from convrnn import create_model
from convrnn.models.stack import default_scales, skip_sources


def tiny(name="stack", **kw):
    base = dict(cell="convlstm", layers=2, channels=4, frame_size=(16, 16), in_len=3, out_len=2)
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
    kw = dict(cell="convlstm", channels=4, frame_size=(16, 16), in_len=2, out_len=1)
    flat = create_model("stack", layers=6, **kw)
    ms = create_model("msrnn", **kw)
    assert ms.sizes == [(16, 16), (8, 8), (4, 4), (4, 4), (8, 8), (16, 16)]
    assert ms.skips == [None, None, None, None, 1, 0]
    assert sum(p.numel() for p in flat.parameters()) == sum(p.numel() for p in ms.parameters())
    out = ms(torch.rand(2, 3, 1, 16, 16)).outputs
    assert out.shape == (2, 2, 1, 16, 16)
    out.sum().backward()
    assert all(p.grad is not None for p in ms.parameters())


def test_msrnn_rejects_indivisible_size_naming_smallest_valid():
    with pytest.raises(ValueError, match="smallest valid size is 20x20"):
        create_model("msrnn", cell="convlstm", channels=4, frame_size=(18, 18))


@pytest.mark.parametrize("layers", [2, 3, 4, 5, 6, 8])
def test_default_scales_mirror(layers):
    s = default_scales(layers)
    assert len(s) == layers and s[0] == 1 and s[-1] == 1 and min(s) >= 0.25
    assert list(s) == list(s)[::-1]


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
