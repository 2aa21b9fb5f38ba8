"""The ``convrnn`` command: a table of subcommands, each a function ``argv -> exit status``.

    convrnn models                          list registered cells and models
    convrnn cost CELL [options] | --config  parameters / multiplications / MACs / memory
    convrnn fit|validate|test|predict --config FILE.yaml [--key value ...]   (Lightning)
    convrnn predict --ckpt_path CKPT --input FILE_OR_FOLDER [--out_len N] [--output DIR]
    convrnn export --ckpt_path CKPT --output model.onnx [--mode sequence|step]

To add a command, write ``def name(argv: list[str]) -> int`` (here, or in its own module imported
lazily) and add one line to :data:`COMMANDS`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from .cost import cell_cost, format_table, model_cost, reference_table
from .registry import create_cell, list_cells, list_models, model_aliases, model_from_config


def models(argv: list[str]) -> int:
    """``convrnn models``: every registered model and cell name."""
    print("models:")
    for name, doc in list_models().items():
        print(f"  {name:22s} {doc}")
    for alias, name in model_aliases().items():
        print(f"  {alias:22s} alias of {name}")
    print("cells:")
    for name, doc in list_cells().items():
        print(f"  {name:22s} {doc}")
    return 0


def _cost_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convrnn cost",
        description="Parameters and multiplications of one cell step (batch 1), or of a whole model "
                    "over one sequence (--config).  1 MAC = 2 FLOPs; mults = MACs + elementwise products.")
    p.add_argument("cell", nargs="?", metavar="CELL", help="registered cell name (convrnn models lists them)")
    p.add_argument("--variant", choices=("conv", "indconv", "ind"),
                   help="recurrent terms: conv, Hadamard in the gates (indconv) or everywhere (ind)")
    p.add_argument("--hadamard", choices=("position", "channel"), default="position",
                   help="Hadamard weights per position (C x H x W, default) or per channel (C)")
    p.add_argument("--in-channels", type=int, metavar="N", help="C_x (default: --channels)")
    p.add_argument("--channels", type=int, default=64, metavar="N", help="C (default 64)")
    p.add_argument("--kernel", type=int, default=3, metavar="K", help="k (default 3)")
    p.add_argument("--height", type=int, default=16, metavar="H", help="state height (default 16)")
    p.add_argument("--width", type=int, default=16, metavar="W", help="state width (default 16)")
    p.add_argument("--config", type=Path, metavar="FILE.yaml", help="training YAML: cost of its model over one sequence")
    p.add_argument("--batch", type=int, default=1, metavar="N", help="batch used to measure a --config model (default 1)")
    p.add_argument("--table", action="store_true", help="print the reference table (docs/cost.md)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def load_model_config(path: Path) -> dict:
    """The model dict of a YAML config: ``model.net`` (training config) or ``model`` itself."""
    import yaml
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} not found")
    cfg = yaml.safe_load(path.read_text())
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if isinstance(model, dict) and isinstance(model.get("net"), dict):
        return model["net"]
    if isinstance(model, dict) and "name" in model:
        return model
    raise ValueError(f"{path}: expected a 'model:' section holding 'net: {{name: stack, ...}}' or the model "
                     "dict itself ({name: stack, cell: convlstm, ...})")


def _single_cell(a) -> dict:
    for flag in ("in_channels", "channels", "kernel", "height", "width"):
        value = getattr(a, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    kw = {"in_channels": a.channels if a.in_channels is None else a.in_channels, "channels": a.channels, "kernel": a.kernel,
          "hadamard": a.hadamard, "size": (a.height, a.width)}
    if a.variant:
        kw["recurrent"] = a.variant
    cell = create_cell(a.cell, **kw)
    return cell_cost(cell, a.height, a.width)


def _print(result: dict, as_json: bool, header: str) -> None:
    if as_json:
        print(json.dumps(result))
        return
    print(header)
    for key, value in result.items():
        print(f"  {key:16s} {value:>16,d}")


def cost(argv: list[str]) -> int:
    """``convrnn cost CELL [options] | --config FILE.yaml [--batch N] | --table`` (see --help)."""
    p = _cost_parser()
    a = p.parse_args(argv)
    chosen = [bool(a.cell), a.config is not None, a.table]
    if sum(chosen) != 1:
        p.error("give exactly one of CELL, --config FILE.yaml or --table")
    if a.batch != 1 and a.config is None:
        p.error("--batch applies to --config only (cell counts are per sample)")
    try:
        if a.table:
            print(format_table(reference_table()))
        elif a.config is not None:
            model = model_from_config(load_model_config(a.config))
            _print(model_cost(model, a.batch), a.json,
                   f"{a.config}: per sequence ({model.in_len}+{model.out_len} frames, teacher forcing), "
                   "codec included; MACs = conv/matmul, mults = MACs + elementwise products")
        else:
            _print(_single_cell(a), a.json,
                   f"{a.cell}: one step, batch 1, {a.height}x{a.width} state; macs = conv MACs (1 MAC = 2 FLOPs), "
                   "mults = MACs + Hadamard + gating products")
    except KeyError as e:  # unknown cell / model names
        p.error(e.args[0] if e.args else str(e))
    except (ValueError, TypeError) as e:
        p.error(str(e))
    return 0


def lightning(command: str):
    """``convrnn fit|validate|test|predict``: the Lightning CLI (imported only when used)."""
    def run(argv: list[str]) -> int:
        from .lightning_cli import cli_main
        return cli_main([command, *argv])
    return run


def lazy(module: str):
    """The ``command(argv)`` of ``convrnn.<module>``, imported only when used; its argparse exits
    (``--help``, usage errors) become exit statuses."""
    def run(argv: list[str]) -> int:
        try:
            return importlib.import_module(f".{module}", __package__).command(argv)
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return run


COMMANDS = {
    "models": models,
    "cost": cost,
    "fit": lightning("fit"),
    "validate": lightning("validate"),
    "test": lightning("test"),
    "predict": lazy("predict_cli"),   # --input: a checkpoint on your files; --config: Lightning
    "export": lazy("export"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"convrnn: unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
        return 2
    return COMMANDS[cmd](rest)


if __name__ == "__main__":
    raise SystemExit(main())
