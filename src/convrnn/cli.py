"""The ``convrnn`` command: a table of subcommands (:data:`COMMANDS`), each a function
``argv -> exit status``; :func:`main` dispatches and turns the errors of convrnn's own checks into
one line on stderr (the traceback with ``--debug`` or ``CONVRNN_DEBUG=1``).  To add a command, write
``def name(argv: list[str]) -> int`` (here, or in its own module imported lazily), add one line to
:data:`COMMANDS` and one to :data:`USAGE`.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
import re
from pathlib import Path

from . import convert as convert_
from .cost import cell_cost, format_table, model_cost, reference_table
from .registry import (cell_entry, cell_families, create_cell, list_cells, list_models, model_aliases, model_entry,
                       model_from_config)

DEBUG_ENV = "CONVRNN_DEBUG"
USAGE = """\
usage: convrnn COMMAND [options]        (convrnn COMMAND --help: every option of a command)

commands:
  models                                 every model and cell family, with variants and arguments
  cost CELL [options] | --config FILE    parameters, multiplications, MACs (and memory) of a cell or a model
  fit --config FILE.yaml                 train, then test the best checkpoint (Lightning)
  validate|test --config FILE.yaml --ckpt_path CKPT
                                         metrics of a checkpoint on the validation / test data
  predict --config FILE.yaml --ckpt_path CKPT
                                         predictions (.npy) and GIF/PNG examples of the test data
     or predict --ckpt_path CKPT --input FILE_OR_FOLDER [--out_len N] [--output DIR]
                                         forecast your own frames (.npy/.npz/.h5, PNG folders, videos), no config
  export --ckpt_path CKPT --output FILE.onnx [--mode sequence|step]
                                         ONNX graph, checked against PyTorch in ONNX Runtime (pip install convrnn[deploy])
  data NAME --root DIR [--protocol P]    check a dataset folder (kth, taxibj, hko7, radolan, folder, ...)
  convert --from openstl|msrnn CKPT --config FILE.yaml --output OUT.ckpt
                                         import an OpenSTL or MS-RNN checkpoint (docs/references.md)

fit/validate/test/predict: --section.key value overrides the config (e.g. --model.net.channels 16,
--trainer.max_steps 1000); --ckpt_path last|best takes the newest checkpoint of this config's runs
(fit: resume); --run_dir DIR (default runs) is where each command makes its new folder
RUN_DIR/<config path>/<time>-<command>, printed at the end.  Errors are one line; --debug (or
CONVRNN_DEBUG=1) shows the traceback.  Docs: README.md, docs/training.md, docs/deploy.md.
"""


def _paragraph(obj) -> str:
    """The first paragraph of a docstring, on one line, without reST's double backquotes."""
    return " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].replace("``", "").split())


def models(argv: list[str]) -> int:
    """``convrnn models``: one line per model (aliases, arguments) and per cell family (variants,
    own arguments), with the first paragraph of its docstring."""
    from .netconfig import builder_signature

    aliases: dict[str, list[str]] = {}
    for alias, name in model_aliases().items():
        aliases.setdefault(name, []).append(alias)
    print("models (in a config: model: net: {name: NAME, ARG: value, ...}):")
    for name in list_models():
        args = ", ".join(builder_signature(model_entry(name))[0])
        also = f" (alias {', '.join(aliases[name])})" if name in aliases else ""
        print(f"  {name}{also}: {_paragraph(model_entry(name))} Arguments: {args}.")
    common = ("self", "in_channels", "channels", "kernel", "recurrent", "hadamard", "size")
    print(f"cells (net: cell: NAME; every cell takes {', '.join(common[1:])}; recurrent = conv | indconv | ind, "
          "hadamard = position | channel, through cell_kw):")
    names: dict[type, list[str]] = {}
    for name in list_cells():
        names.setdefault(cell_entry(name)[0], []).append(name)
    for family, cls in cell_families().items():
        own = [p for p in inspect.signature(cls.__init__).parameters if p not in common]
        extra = f" Own arguments: {', '.join(own)}." if own else ""
        print(f"  {family} ({', '.join(names[cls])}): {_paragraph(cls)}{extra}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse that prints the error and where to find the options, not the usage first."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n(`{self.prog} --help` lists every option)\n")


def _cost_parser() -> argparse.ArgumentParser:
    p = _Parser(
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
    """The model dict of a YAML config: ``model.net`` (training config) or ``model`` itself, typed
    (:func:`convrnn.netconfig.check_net`)."""
    import yaml

    from .netconfig import check_net
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} {'is a folder' if path.is_dir() else 'not found'}")
    cfg = yaml.safe_load(path.read_text())
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if isinstance(model, dict) and isinstance(model.get("net"), dict):
        return check_net(model["net"])
    if isinstance(model, dict) and "name" in model:
        return check_net(model, "model")
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


def data(argv: list[str]) -> int:
    """``convrnn data NAME --root DIR``: :func:`convrnn.data.check.main` (imported only when used)."""
    from .data.check import main as check
    return check(argv)


COMMANDS = {
    "models": models,
    "cost": cost,
    "data": data,
    "fit": lightning("fit"),
    "validate": lightning("validate"),
    "test": lightning("test"),
    "predict": lazy("predict_cli"),   # --input: a checkpoint on your files; --config: Lightning
    "export": lazy("export"),
    "convert": convert_.main,
}


def _reported(error: BaseException) -> BaseException | None:
    """The error to report in one line: ``error`` itself or the first of its causes (jsonargparse
    wraps the errors of the classes it builds) that one of convrnn's own checks raised; None when
    there is none: the error is unexpected and keeps its traceback."""
    while error is not None:
        if _own_check(error):
            return error
        error = error.__cause__
    return None


def _own_check(error: BaseException) -> bool:
    """True for an error raised by one of convrnn's own checks (a ValueError, TypeError, KeyError,
    OSError or RuntimeError raised in convrnn's code, whose message says what is wrong and how to fix
    it) or a Lightning misconfiguration."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    if isinstance(error, MisconfigurationException):
        return True
    if not isinstance(error, (ValueError, TypeError, LookupError, OSError, RuntimeError)):
        return False
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    files = re.findall(r'File "([^"]+)"', str(error))     # a DataLoader worker's error carries its traceback
    if "Original Traceback" in str(error) and files:
        return os.path.abspath(files[-1]).startswith(package)
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package)


def _message(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    if "Original Traceback" in str(text):                  # a DataLoader worker's: its last line
        text = str(text).strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(str(text).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """``convrnn COMMAND ...``: run a command; an error of convrnn's own checks prints one line on
    stderr and returns 1 (``--debug`` anywhere, or ``CONVRNN_DEBUG=1``: the traceback instead)."""
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        os.environ[DEBUG_ENV] = "1"            # (DDP workers inherit it)
        if from_sys:
            sys.argv[1:] = argv                # Lightning (and its DDP workers) re-read sys.argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"convrnn: unknown command {cmd!r}; the commands: {', '.join(COMMANDS)} (convrnn --help)",
              file=sys.stderr)
        return 2
    try:
        return COMMANDS[cmd](rest)
    except KeyboardInterrupt:
        print(f"convrnn {cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        reported = _reported(e)
        if os.environ.get(DEBUG_ENV, "") not in ("", "0") or reported is None:
            raise
        print(f"convrnn {cmd}: error: {_message(reported)}", file=sys.stderr)
        print("(--debug or CONVRNN_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
