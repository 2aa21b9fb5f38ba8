"""The ``convrnn`` command.

    convrnn models                          list registered cells and models
    convrnn cost CELL [options] | --config  parameters / multiplications / MACs / memory
    convrnn fit|validate|test|predict --config FILE.yaml [--key value ...]   (Lightning)
"""
from __future__ import annotations

import sys


def _models(argv: list[str]) -> int:
    from .registry import list_cells, list_models
    print("models:")
    for name, doc in list_models().items():
        print(f"  {name:22s} {doc}")
    print("cells:")
    for name, doc in list_cells().items():
        print(f"  {name:22s} {doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "models":
        return _models(rest)
    if cmd == "cost":
        from .cost import main as cost_main
        return cost_main(rest)
    if cmd in ("fit", "validate", "test", "predict"):
        from .train import cli_main
        return cli_main([cmd, *rest])
    print(f"convrnn: unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
