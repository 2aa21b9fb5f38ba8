import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convrnn.loop import phase_mask, unroll
from convrnn.schedules import (
    InverseSigmoid,
    Linear,
    ReverseScheduled,
    TeacherForcing,
    create_schedule,
    sample_mask,
)


def counter_step(x, state):
    # y = x + 1: lets us read back which value was fed at each step.
    return x + 1, None


def test_unroll_feeds_ground_truth_or_own_output_as_mask_says():
    b, n = 2, 5
    inputs = torch.arange(n, dtype=torch.float).mul(10).view(1, n, 1).expand(b, n, 1).clone()
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    out, _ = unroll(counter_step, None, inputs, n, mask)
    # row 0: step0 gt 0 ->1, step1 gt 10 ->11, step2 fed 11 ->12, step3 gt 30 ->31, step4 fed 31 ->32
    assert out[0, :, 0].tolist() == [1, 11, 12, 31, 32]
    # row 1: only the first frame is ground truth
    assert out[1, :, 0].tolist() == [1, 2, 3, 4, 5]


def test_unroll_feeds_back_beyond_available_inputs():
    inputs = torch.zeros(1, 2, 1)
    out, _ = unroll(counter_step, None, inputs, 4)
    assert out[0, :, 0].tolist() == [1, 1, 2, 3]


def test_phase_mask_layout():
    m = phase_mask(3, 4, 2)
    assert m.shape == (3, 5)
    assert m[:, :4].all() and not m[:, 4:].any()


def test_unroll_rejects_bad_mask():
    with pytest.raises(ValueError, match="mask"):
        unroll(counter_step, None, torch.zeros(1, 3, 1), 3, torch.ones(1, 1, 3, dtype=torch.bool))


def test_linear_schedule_matches_openstl_rate():
    s = Linear(start=1.0, end=0.0, iterations=50_000)
    assert s.probs(0) == (1.0, 1.0)
    assert s.probs(10_000)[1] == pytest.approx(1 - 2e-5 * 10_000)
    assert s.probs(60_000)[1] == 0.0


def test_inverse_sigmoid_formula():
    s = InverseSigmoid(a=1000)
    for i in (0, 1000, 5000, 20000):
        assert s.probs(i)[1] == pytest.approx(1000 / (1000 + math.exp(i / 1000)))


def test_reverse_schedule_phases():
    s = ReverseScheduled(step1=100, step2=200, alpha=10)
    assert s.probs(0) == (0.5, 0.5)
    enc, dec = s.probs(150)
    assert enc == pytest.approx(1 - 0.5 * math.exp(-5))
    assert dec == pytest.approx(0.25)
    assert s.probs(1000) == (1.0, 0.0)


def test_create_schedule_errors_on_unknown_name():
    assert isinstance(create_schedule("teacher"), TeacherForcing)
    with pytest.raises(KeyError, match="linear"):
        create_schedule("nope")


@settings(max_examples=30, deadline=None)
@given(p_in=st.sampled_from([0.0, 1.0]), p_out=st.sampled_from([0.0, 1.0]), b=st.integers(1, 4),
       i=st.integers(1, 5), o=st.integers(1, 5), per_sample=st.booleans())
def test_sample_mask_deterministic_probabilities(p_in, p_out, b, i, o, per_sample):
    m = sample_mask(p_in, p_out, b, i, o, per_sample=per_sample)
    assert m.shape == (b, i + o - 1) and m.dtype == torch.bool
    assert m[:, 0].all()
    assert bool(m[:, 1:i].all()) == (p_in == 1.0) or i == 1
    if o > 1:
        assert bool(m[:, i:].all()) == (p_out == 1.0)
        assert bool((~m[:, i:]).all()) == (p_out == 0.0)


def test_sample_mask_frequency_and_shared_coin():
    torch.manual_seed(1)
    m = sample_mask(1.0, 0.3, 4000, 2, 3)
    assert abs(m[:, 2:].float().mean().item() - 0.3) < 0.03
    shared = sample_mask(1.0, 0.5, 8, 2, 6, per_sample=False)
    assert (shared == shared[0]).all()
