"""MIM, Memory In Memory (Wang et al., CVPR 2019): the MIM block for layers >= 2.

A MIM network (``mim_net`` in :mod:`convrnn.models.presets`) is a PredRNN stack whose first layer is
an ST-LSTM (cell ``predrnn``) and whose upper layers are MIM blocks (cell ``mim``): the ST-LSTM
forget path ``f ⊙ c_{t-1}`` is replaced by two cascaded recurrent modules that model
non-stationarity through differencing.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..layers import RecurrentOp, input_conv, set_forget_bias
from ..registry import register_cell
from .base import Below, Cell

VARIANTS = ("paper", "msrnn", "openstl")
MEMORIES = ("mim", "lstm")


class MIMState(NamedTuple):
    h: Tensor       # H^l_t, the layer output
    c: Tensor       # C^l_t, the temporal memory
    m: Tensor       # M^l_t, the zig-zag spatiotemporal memory leaving this layer
    n: Tensor       # N^l_t, MIM-N's non-stationary memory
    s: Tensor       # S^l_t, MIM-S's stationary memory
    prev_input: Tensor  # not a recurrent state: what δ differences against at the next step
    lateral: Tensor | None = None   # variant="openstl": MIM-N's output D_t (read back, and by the layer above)


@register_cell("mim")
class MIM(Cell):
    """MIM block (Wang et al., "Memory In Memory: A Predictive Neural Network for Learning
    Higher-Order Non-Stationarity from Spatiotemporal Dynamics", CVPR 2019) for layers l >= 2.

    With x_t the layer input (H^{l-1}_t in a flat stack), h, c the layer's own states, M the
    zig-zag memory arriving from the layer below (``m``), ``variant="paper"`` (the default)::

        δ_t = x_t - x_{t-1}                                         (input difference)
        MIM-N (non-stationary module, memory N):
            i, f, g = σ, σ, tanh(W_{i,f,g} * δ_t + U_{i,f,g} ∘ N_{t-1} + b)
            N_t = f ⊙ N_{t-1} + i ⊙ g
            D_t = σ(W_o * δ_t + U_o ∘ N_t + b_o) ⊙ tanh(N_t)
        MIM-S (stationary module, memory S), driven by D_t and the old temporal memory C_{t-1}:
            i, f, g = σ, σ, tanh(W_{i,f,g} * D_t + U_{i,f,g} ∘ C_{t-1} + b)
            S_t = f ⊙ S_{t-1} + i ⊙ g
            T_t = σ(W_o * D_t + U_o ∘ C_{t-1} + V_o ∘ S_t + b_o) ⊙ tanh(S_t)
        block (ST-LSTM with the forget path replaced by T_t):
            i, g   = σ, tanh(W_{i,g} * x_t + U_{i,g} ∘ h_{t-1} + b)
            C_t    = T_t + i ⊙ g
            i', f', g' = σ, σ, tanh(W' * x_t + U' ∘ M + b')
            M_t    = f' ⊙ M + i' ⊙ g'
            o      = σ(W_o * x_t + U_o ∘ h_{t-1} + V_c ∘ C_t + V_m ∘ M_t + b_o)
            h_t    = o ⊙ tanh(W_{1x1} * [C_t; M_t] + b_{1x1})

    δ differences exactly what the layer is fed (in an MS-RNN pyramid: at its scale, skips
    included), and δ_0 = 0: x_{t-1} starts as the first input itself (no change seen yet).

    ``variant="msrnn"`` (MS-RNN's code, ``models/mim.py``/``ms_mim.py``): the same equations and
    parameters with δ_t = x_t - R(h^{l-1}_{t-1}), R(h^{l-1}) being the layer's input *without* the
    skips (the network passes it, :class:`~convrnn.cells.base.Below`), and δ_0 = x_0 (it differences
    against zeros at the first step).  In a flat stack only δ_0 differs from ``paper``.

    ``variant="openstl"`` (OpenSTL's ``MIMBlock`` + ``MIMN``, the thuml MIM code)::

        MIM-N, on u_t = δ_t (x_t - x_{t-1}) or, when the layer below is an openstl MIM block, on its D_t:
            i, f, o, g = W * u_t + U ∘ D_{t-1}   (+ P_{i,f} ⊙ N_{t-1} on i, f; + forget_bias on f)
            N_t = σ(f) ⊙ N_{t-1} + σ(i) ⊙ tanh(g);   D_t = σ(o + P_o ⊙ N_t) ⊙ tanh(N_t)
        MIM-S, on D_t, C_{t-1} and S_{t-1} (S is detached from the graph at every step):
            i, f, o, g = W * D_t + U ∘ C_{t-1} + b   (+ P_{i,f} ⊙ S_{t-1} on i, f)
            S_t = σ(f) ⊙ S_{t-1} + σ(i) ⊙ tanh(g);   T_t = σ(o + P_o ⊙ S_t) ⊙ tanh(S_t)
        block (one input convolution for both memories: i and g are shared by the C and M paths):
            a_i, a_f, a_o, a_g = W * x_t + b
            C_t = T_t + σ(a_i + U_i ∘ h_{t-1}) ⊙ tanh(a_g + U_g ∘ h_{t-1})
            M_t = σ(a_f + U'_f ∘ M) ⊙ M + σ(a_i + U'_i ∘ M) ⊙ tanh(a_g + U'_g ∘ M)
            o   = σ(a_o + U_o ∘ h_{t-1} + U'_o ∘ M)                      (the old M, no C_t, M_t)
            h_t = o ⊙ tanh(W_{1x1} * [C_t; M_t] + b_{1x1})

    MIM-N convolves its own previous output D_{t-1}; P are per-position (C x H x W, or per channel
    with ``hadamard="channel"``) peephole and output weights.  MIM-N has no bias, only OpenSTL's
    constant ``forget_bias`` on f: so at the first step (u_0 = δ_0 = 0, or the D_0 = 0 of the layer
    below; D_{-1} = N_{-1} = 0) it gives N_0 = σ(i) ⊙ tanh(0) = 0 and D_0 = 0 exactly, which is what
    OpenSTL gets by not running it then (it calls MIM-N at t = 0 and discards the result).  The layer
    passes D_t up (``state.lateral``): OpenSTL's cascade, where MIM-N of layer l >= 3 reads the MIM-N
    output of the layer below instead of a difference.  OpenSTL keeps S on the module between
    sequences (even between batches: its MIM requires equal train and test batch sizes); here S
    starts at zero for every sequence.

    ``memory="lstm"`` replaces MIM-N and MIM-S by the ST-LSTM forget path (C_t = σ(f) ⊙ C_{t-1} +
    i ⊙ g, with f from W_f * x_t + U_f ∘ h_{t-1} + b_f): the first layer of MS-RNN's and thuml's
    MotionRNN, an ST-LSTM with MIM's parameter layout (for a plain ST-LSTM use ``predrnn``).

    ``∘`` is a convolution or a Hadamard product as ``recurrent`` says (docs/models.md §1):
    every term on a state (N, C, S, h, M, D) of a gate is Hadamard in ``indconv`` and ``ind``, the
    candidates' (g) terms only in ``ind``.  Terms on the module inputs δ, D and x stay convolutions;
    the openstl peephole and output weights P are Hadamard in every variant.
    Gating products per step: 10 (MIM-N 3, MIM-S 3, i⊙g, f'⊙M, i'⊙g', o⊙tanh); 5 with ``memory="lstm"``.

    Biases and forget bias: one bias per block on the input convolutions, none on recurrent terms;
    ``forget_bias`` (default 1.0) initialises the biases of f (MIM-N, MIM-S) and f'.  The thuml/
    OpenSTL code has no biases and adds a constant 1 to those forget gates (the same function class;
    :mod:`convrnn.convert` folds the constant into the bias); MS-RNN's code biases every convolution
    and adds no constant (its configs here use ``forget_bias: 0``).  ``m=None`` feeds back this
    layer's own previous M.

    Not reproduced: MS-RNN's code runs a full MIM cell in every layer (layer 1 computes MIM-N/S
    outputs it never uses, layers >= 2 an unused forget gate): 7.361 M parameters at 6 x 64.
    """

    gating_products = 10
    zigzag = True

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, recurrent: str = "conv",
                 hadamard: str = "position", size=None, forget_bias: float = 1.0, variant: str = "paper",
                 memory: str = "mim"):
        super().__init__(in_channels, channels, kernel, recurrent, hadamard, size)
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r}; choose one of {VARIANTS}")
        if memory not in MEMORIES:
            raise ValueError(f"memory={memory!r}; choose one of {MEMORIES}")
        if variant == "openstl" and memory == "lstm":
            raise ValueError("memory='lstm' is the ST-LSTM forget path of MS-RNN's and thuml's MotionRNN; OpenSTL's "
                             "MIM has no such block (its first layer is a 'predrnn' cell)")
        self.variant, self.memory = variant, memory
        self.reads_below = variant != "paper"
        if variant == "openstl":
            self._build_openstl(forget_bias)
            return
        if memory == "mim":
            # MIM-N
            self.n_wx = input_conv(in_channels, 4, channels, kernel)   # i, f, g, o on δ
            self.n_un = self.recurrent_op(gates=2, candidates=1)       # i, f, g on N_{t-1}
            self.n_uo = self.recurrent_op(gates=1, candidates=0)       # o on N_t
            # MIM-S
            self.s_wd = input_conv(channels, 4, channels, kernel)      # i, f, o, g on D_t
            self.s_uc = self.recurrent_op(gates=3, candidates=1)       # i, f, o, g on C_{t-1}
            self.s_uo = self.recurrent_op(gates=1, candidates=0)       # o on S_t
            set_forget_bias(self.n_wx, channels, (1,), forget_bias)
            set_forget_bias(self.s_wd, channels, (1,), forget_bias)
        else:
            self.gating_products = 5
        lstm = memory == "lstm"
        # block: i, o, g, i', f', g' (and f for memory="lstm") on x_t
        self.wx = input_conv(in_channels, 7 if lstm else 6, channels, kernel)
        self.uh = self.recurrent_op(gates=3 if lstm else 2, candidates=1)   # i, o (, f) | g on h_{t-1}
        self.um = self.recurrent_op(gates=2, candidates=1)         # i', f' | g' on M
        self.vc = self.recurrent_op(gates=1, candidates=0)         # o on C_t
        self.vm = self.recurrent_op(gates=1, candidates=0)         # o on M_t
        self.fuse = nn.Conv2d(2 * channels, channels, 1)           # W_1x1 * [C_t; M_t] + b
        set_forget_bias(self.wx, channels, (4, 6) if lstm else (4,), forget_bias)

    def _build_openstl(self, forget_bias: float) -> None:
        c, k = self.channels, self.kernel

        def hadamard(blocks: int) -> RecurrentOp:   # peephole / output weights: Hadamard in every variant
            return RecurrentOp(c, ("hadamard",) * blocks, k, self.hadamard, self.size)

        self.n_wx = input_conv(self.in_channels, 4, c, k, bias=False)   # i, f, o, g on u_t (δ or D below)
        self.n_forget = float(forget_bias)                  # OpenSTL's constant on MIM-N's f (no bias)
        self.n_ud = self.recurrent_op(gates=3, candidates=1)   # i, f, o | g on D_{t-1}
        self.n_peep, self.n_uo = hadamard(2), hadamard(1)   # i, f on N_{t-1}; o on N_t
        self.s_wd = input_conv(c, 4, c, k)                  # i, f, o, g on D_t
        self.s_uc = self.recurrent_op(gates=3, candidates=1)   # i, f, o | g on C_{t-1}
        self.s_peep, self.s_uo = hadamard(2), hadamard(1)   # i, f on S_{t-1}; o on S_t
        self.wx = input_conv(self.in_channels, 4, c, k)     # a_i, a_f, a_o, a_g on x_t
        self.uh = self.recurrent_op(gates=2, candidates=1)   # i, o | g on h_{t-1}
        self.um = self.recurrent_op(gates=3, candidates=1)   # i', f', o | g' on M
        self.fuse = nn.Conv2d(2 * c, c, 1)
        for conv in (self.s_wd, self.wx):
            set_forget_bias(conv, c, (1,), forget_bias)

    def init_state(self, x: Tensor) -> MIMState:
        z = self.zeros(x)
        if self.variant == "openstl":
            return MIMState(z, z, z, z, z, x, z)          # δ_0 = 0, D_{-1} = 0
        return MIMState(z, z, z, z, z, torch.zeros_like(x) if self.variant == "msrnn" else x)

    # -- paper / msrnn ------------------------------------------------------------------------
    def nonstationary(self, delta: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
        """MIM-N: (D_t, N_t) from the input difference δ_t and N_{t-1}."""
        i, f, g, o = self.n_wx(delta).chunk(4, 1)
        ui, uf, ug = self.n_un(n).chunk(3, 1)
        n = torch.sigmoid(f + uf) * n + torch.sigmoid(i + ui) * torch.tanh(g + ug)
        d = torch.sigmoid(o + self.n_uo(n)) * torch.tanh(n)
        return d, n

    def stationary(self, d: Tensor, c: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """MIM-S: (T_t, S_t) from MIM-N's output D_t, the old temporal memory C_{t-1} and S_{t-1}."""
        i, f, o, g = (self.s_wd(d) + self.s_uc(c)).chunk(4, 1)
        s = torch.sigmoid(f) * s + torch.sigmoid(i) * torch.tanh(g)
        t = torch.sigmoid(o + self.s_uo(s)) * torch.tanh(s)
        return t, s

    def block(self, x: Tensor, state: MIMState, m: Tensor | None, diff_input: Tensor | None = None,
              below: Below | None = None) -> tuple[Tensor, Tensor, MIMState]:
        """Everything but the output product: returns (o, tanh(W_1x1 * [C_t; M_t]), new state with
        the old h).  MIM-N differences ``diff_input`` (default: x; MotionRNN feeds the block
        MotionGRU's output and differences the raw input).  ``below``: see the ``msrnn`` and
        ``openstl`` variants."""
        m = self.memory_in(x, state, m)
        if self.variant == "openstl":
            return self._block_openstl(x, state, m, below)
        h, c, _, n, s, prev_input, _ = state
        seen = x if diff_input is None else diff_input
        keep = below.direct if (self.variant == "msrnn" and below is not None) else seen
        if self.memory == "lstm":
            xi, xo, xg, xi2, xf2, xg2, xf = self.wx(x).chunk(7, 1)
            ui, uo, uf, ug = self.uh(h).chunk(4, 1)
            t = torch.sigmoid(xf + uf) * c
        else:
            xi, xo, xg, xi2, xf2, xg2 = self.wx(x).chunk(6, 1)
            ui, uo, ug = self.uh(h).chunk(3, 1)
            d, n = self.nonstationary(seen - prev_input, n)
            t, s = self.stationary(d, c, s)
        vi, vf, vg = self.um(m).chunk(3, 1)
        c = t + torch.sigmoid(xi + ui) * torch.tanh(xg + ug)
        m = torch.sigmoid(xf2 + vf) * m + torch.sigmoid(xi2 + vi) * torch.tanh(xg2 + vg)
        o = torch.sigmoid(xo + uo + self.vc(c) + self.vm(m))
        y = torch.tanh(self.fuse(torch.cat([c, m], 1)))
        return o, y, MIMState(h, c, m, n, s, keep)

    # -- openstl ------------------------------------------------------------------------------
    def _module(self, u: Tensor, r: Tensor, peep_on: Tensor, w: nn.Module, ur: nn.Module, peep: nn.Module,
                uo: nn.Module, forget: float = 0.0) -> tuple[Tensor, Tensor]:
        """OpenSTL's MIMN/MIMS: i, f, o, g = W u + U ∘ r (+ P ⊙ mem on i, f; + forget on f);
        mem_t = σ(f) mem + σ(i) tanh(g); out = σ(o + P_o ⊙ mem_t) ⊙ tanh(mem_t).  Returns (out, mem_t)."""
        i, f, o, g = (w(u) + ur(r)).chunk(4, 1)
        pi, pf = peep(peep_on).chunk(2, 1)
        mem = torch.sigmoid(f + pf + forget) * peep_on + torch.sigmoid(i + pi) * torch.tanh(g)
        return torch.sigmoid(o + uo(mem)) * torch.tanh(mem), mem

    def _block_openstl(self, x: Tensor, state: MIMState, m: Tensor, below: Below | None
                       ) -> tuple[Tensor, Tensor, MIMState]:
        h, c, _, n, s, prev_input, d = state
        u = below.lateral if below is not None and below.lateral is not None else x - prev_input
        d, n = self._module(u, d, n, self.n_wx, self.n_ud, self.n_peep, self.n_uo, self.n_forget)
        t, s = self._module(d, c, s.detach(), self.s_wd, self.s_uc, self.s_peep, self.s_uo)
        ai, af, ao, ag = self.wx(x).chunk(4, 1)
        hi, ho, hg = self.uh(h).chunk(3, 1)
        mi, mf, mo, mg = self.um(m).chunk(4, 1)
        o = torch.sigmoid(ao + ho + mo)
        c = t + torch.sigmoid(ai + hi) * torch.tanh(ag + hg)
        m = torch.sigmoid(af + mf) * m + torch.sigmoid(ai + mi) * torch.tanh(ag + mg)
        y = torch.tanh(self.fuse(torch.cat([c, m], 1)))
        return o, y, MIMState(h, c, m, n, s, x, d)

    def forward(self, x: Tensor, state: MIMState | None = None, m: Tensor | None = None,
                below: Below | None = None) -> tuple[Tensor, MIMState, Tensor]:
        self.check(x)
        o, y, new = self.block(x, state if state is not None else self.init_state(x), m, below=below)
        h = o * y
        return h, new._replace(h=h), new.m

    def extra_repr(self) -> str:
        return super().extra_repr() + f", variant={self.variant!r}, memory={self.memory!r}"
