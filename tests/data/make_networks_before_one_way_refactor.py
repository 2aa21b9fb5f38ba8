"""Snapshot every network's outputs before the one-way refactor (issue 9)."""
import torch
from convrnn import create_model, list_cells
from convrnn.schedules import sample_mask
torch.set_num_threads(1)
SMALL = {"channels": 4, "frame_size": (8, 8), "in_len": 3, "out_len": 2}
cfgs = {}
base = sorted({n for n in list_cells() if not n.endswith(("_ind", "_indconv")) and not n.startswith("convind") and n != "gem_hadamard"})
for c in base:
    for v in ("conv", "indconv", "ind"):
        cells = ["convlstm", c] if c == "motionrnn" else c
        cfgs[f"stack-{c}-{v}"] = {"name": "stack", "cell": cells, "layers": 2, "cell_kw": {"recurrent": v}, **SMALL}
for c in ("convlstm", "gem", "predrnn", "trajgru", "predrnnv2", "preciplstm"):
    cfgs[f"msrnn-{c}"] = {"name": "msrnn", "cell": c, "layers": 4, "scales": [1, 0.5, 0.5, 1], **SMALL}
cfgs["msrnn6-convlstm-unet3p"] = {"name": "msrnn", "cell": "convlstm", "layers": 6, "skip": "unet3p", **SMALL}
cfgs["predrnnpp"] = {"name": "predrnnpp", "layers": 3, **SMALL}
cfgs["predrnnpp-ms"] = {"name": "predrnnpp", "layers": 4, "scales": [1, 0.5, 0.5, 1], **SMALL}
cfgs["predrnnv2"] = {"name": "predrnnv2", "layers": 3, "scales": [1, 0.5, 1], **SMALL}
cfgs["mim"] = {"name": "mim", "layers": 3, "scales": [1, 0.5, 1], **SMALL}
cfgs["motionrnn"] = {"name": "motionrnn", "layers": 3, "scales": [1, 0.5, 1], **SMALL}
cfgs["composite-convlstm"] = {"name": "composite", "cell": "convlstm", "layers": 2, "codec_channels": (4, 4, 4), **SMALL}
cfgs["composite-predrnn"] = {"name": "composite", "cell": "predrnn", "layers": 2, "codec_channels": (4, 4, 4), "conditional_reconstructor": True, **SMALL}
cfgs["convlstm-peephole"] = {"name": "stack", "cell": "convlstm", "layers": 1, "cell_kw": {"peephole": True}, "patch": 2, "embed": "conv1x1", **SMALL}
cfgs["convjanet-chrono"] = {"name": "stack", "cell": "convjanet", "layers": 1, "cell_kw": {"chrono_tmax": 10}, **SMALL}
cfgs["predrnnpp-ofromh"] = {"name": "stack", "cell": "predrnnpp", "layers": 2, "cell_kw": {"o_from_h": True, "recurrent": "indconv"}, **SMALL}
out = {}
g = torch.Generator().manual_seed(0)
for key, cfg in cfgs.items():
    torch.manual_seed(1)
    c = dict(cfg)
    model = create_model(c.pop("name"), **c)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3, generator=g)
    model.eval()
    frames = torch.rand(2, 5, 1, 8, 8, generator=g)
    mask = sample_mask(0.7, 0.5, 2, 3, 2, generator=g)
    with torch.no_grad():
        pred = model(frames, mask)
        free = model(frames[:, :3])
    out[key] = {"config": cfg, "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
                "frames": frames, "mask": mask, "outputs": pred.outputs, "aux": {k: v for k, v in pred.aux.items()},
                "future": free.future}
    print(key, sum(p.numel() for p in model.parameters()))
torch.save(out, "/work/main/tests/data/networks_before_one_way_refactor.pt")
