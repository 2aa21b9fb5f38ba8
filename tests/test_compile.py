"""``PredictionTask(compile=...)`` compiles the network in place and keeps its checkpoint names
(backend "eager", TorchDynamo's trace replayed by eager kernels: the equal losses there only show the
compiled module is the one that runs).  ``PredictionTask(fast=...)`` compiles the training step: the
same losses and gradients as eager mode, with the kernels inductor generates for this CPU for the
flat stack and the MS pyramid, traced for every cell family.  That every registered network traces
as one graph is tested over the registry in test_contract.py."""
import pytest
import torch
import torch._dynamo
from helpers import one_thread  # noqa: F401  (autouse fixture)

from convrnn import cell_families
from convrnn.train import PredictionTask

pytestmark = [pytest.mark.filterwarnings("ignore:You are trying to `self.log"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated"),   # inside inductor
              pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
              pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")]

SMALL = {"channels": 4, "frame_size": (16, 16), "in_len": 2, "out_len": 2}


def test_prediction_task_compiles_in_place_and_keeps_checkpoint_names():
    net = {"name": "stack", "cell": "convlstm", "layers": 1, "patch": 2, **SMALL}
    torch.manual_seed(0)
    plain = PredictionTask(net, schedule={"name": "teacher"})
    torch.manual_seed(0)
    torch._dynamo.reset()
    fast = PredictionTask(net, schedule={"name": "teacher"}, compile={"backend": "eager", "fullgraph": True})
    assert list(fast.state_dict()) == list(plain.state_dict())      # no "_orig_mod." prefix
    fast.load_state_dict(plain.state_dict())
    frames = torch.rand(2, 4, 1, 16, 16)
    torch.testing.assert_close(fast.training_step(frames, 0), plain.training_step(frames, 0))
    assert fast.net._compiled_call_impl is not None and plain.net._compiled_call_impl is None


# -- the fast path (PredictionTask(fast=...)) ---------------------------------------------------------
def _pair(net, fast, schedule=None):
    """An eager task and a fast one with the same weights."""
    schedule = schedule or {"name": "linear", "start": 0.5, "end": 0.5}    # a mixed scheduled-sampling mask
    torch.manual_seed(0)
    plain = PredictionTask(net, schedule=schedule)
    torch.manual_seed(0)
    torch._dynamo.reset()
    return plain, PredictionTask(net, schedule=schedule, fast=fast)


def _same_step(plain, fast, frames, steps=2):
    """Training steps on the same batch and mask: the same loss (fp32, relative 1e-5) and gradients."""
    for i in range(steps):
        losses = []
        for task in (plain, fast):
            torch.manual_seed(10 + i)          # the same scheduled-sampling mask for both
            loss = task.training_step(frames, i)
            loss.backward()
            losses.append(loss)
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=0)
        for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
        plain.zero_grad()
        fast.zero_grad()


FRAMES = torch.randint(0, 256, (2, 4, 1, 16, 16), dtype=torch.uint8)    # uint8, as MovingMNISTDataModule sends


@pytest.mark.parametrize("net, scope", [
    ({"name": "stack", "cell": "convlstm", "layers": 2, "patch": 2, **SMALL}, "step"),
    ({"name": "msrnn", "cell": "convlstm", "layers": 3, "scales": [1, 0.5, 1], **SMALL, "out_len": 1}, "sequence"),
], ids=["stack-convlstm-step", "msrnn-convlstm-sequence"])
def test_fast_step_compiled_by_inductor_gives_the_eager_loss_and_gradients(net, scope):
    """The kernels inductor generates (C++ on this CPU) compute the eager step, flat and multi-scale."""
    plain, fast = _pair(net, {"backend": "inductor", "scope": scope})
    _same_step(plain, fast, FRAMES[:, :net["in_len"] + net["out_len"]])
    assert list(fast.state_dict()) == list(plain.state_dict())      # checkpoints keep their names


@pytest.mark.parametrize("scope", ["step", "sequence"])
def test_fast_step_with_an_auxiliary_loss(scope):
    """PredRNN-V2's decoupling loss is part of the compiled objective (traced by AOTAutograd here)."""
    net = {"name": "predrnnv2_net", "layers": 2, **SMALL}
    plain, fast = _pair(net, {"backend": "aot_eager", "scope": scope})
    _same_step(plain, fast, FRAMES)
    if scope == "step":
        assert fast.net.step is not plain.net.step and not hasattr(fast, "_orig_mod")


@pytest.mark.parametrize("family", sorted(cell_families()))
def test_fast_step_scope_traces_every_cell_family(family):
    """Every cell family in a stack through the fast path's step scope (TorchDynamo's trace, replayed by
    eager kernels): one graph per step kind, the eager loss and gradients."""
    cells = ["convlstm", family] if family == "motionrnn" else family      # the Motion Highway needs C_in = C
    net = {"name": "stack", "cell": cells, "layers": 2, **SMALL}
    plain, fast = _pair(net, {"backend": "eager"})
    _same_step(plain, fast, FRAMES, steps=1)


def test_fast_fit_logs_every_n_steps_fuses_the_optimizer_and_trains_as_eager(tmp_path):
    """A Lightning fit with fast=...: the losses of the eager fit, the optimizer fused, and the step's
    metrics logged only on the steps the Trainer writes (log_every_n_steps)."""
    import lightning as L
    from torch.utils.data import DataLoader

    net = {"name": "stack", "cell": "convlstm", "layers": 1, "patch": 2, **SMALL}
    data = torch.rand(8, 4, 1, 16, 16)

    def fit(fast):
        torch.manual_seed(0)
        torch._dynamo.reset()
        task = PredictionTask(net, lr=1e-2, schedule={"name": "linear", "start": 0.5, "end": 0.5}, fast=fast)
        seen, logged = [], []
        task.log = lambda name, value, **kw: logged.append((task.global_step, name))

        class Losses(L.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                seen.append(float(outputs["loss"]))

        trainer = L.Trainer(max_steps=6, log_every_n_steps=3, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                            callbacks=[Losses()], default_root_dir=tmp_path, accelerator="cpu")
        trainer.fit(task, DataLoader(data, batch_size=2))
        return seen, logged, trainer.optimizers[0]

    plain_losses, plain_logged, plain_opt = fit(False)
    fast_losses, fast_logged, fast_opt = fit({"backend": "aot_eager"})
    torch.testing.assert_close(fast_losses, plain_losses, rtol=1e-5, atol=0)
    assert fast_opt.defaults["fused"] and not plain_opt.defaults["fused"]
    assert sorted({s for s, n in plain_logged if n == "train/loss"}) == [0, 1, 2, 3, 4, 5]
    assert sorted({s for s, n in fast_logged if n == "train/loss"}) == [2, 5]


def test_fast_errors():
    net = {"name": "stack", "cell": "convlstm", "layers": 1, **SMALL}
    with pytest.raises(ValueError, match="either compile or fast"):
        PredictionTask(net, compile=True, fast=True)
    with pytest.raises(ValueError, match="scope='layer'"):
        PredictionTask(net, fast={"scope": "layer"})
    composite = {"name": "composite", "cell": "convlstm", "layers": 1, "codec_channels": (4, 4, 4), **SMALL}
    with pytest.raises(ValueError, match="step.*method.*scope: sequence"):
        PredictionTask(composite, fast=True).training_step(FRAMES, 0)
