"""One registry for cells and one for models, timm-style.

    >>> from convrnn import create_model, create_cell
    >>> cell = create_cell("convlstm_indconv", in_channels=1, channels=8, size=(16, 16))
    >>> model = create_model("stack", cell="gem", layers=2, channels=8, frame_size=(16, 16))

A cell file registers its class once with :func:`register_cell`, naming its variants; every name
resolves to ``(class, fixed keyword arguments)``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

_CELLS: dict[str, tuple[type, dict[str, Any], str]] = {}
_MODELS: dict[str, Callable] = {}


def register_cell(name: str, variants: bool = True, aliases: dict[str, str] | None = None):
    """Class decorator: register ``name`` and, if ``variants``, ``name_indconv`` and ``name_ind``
    (Hadamard recurrent terms in the gates / everywhere, reference/cells.md §1).  ``aliases`` maps
    extra names (the papers' spellings, e.g. ``convindconvlstm``) to a variant."""
    def deco(cls):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        _add(name, cls, {}, doc)  # the base name leaves `recurrent` free (default 'conv')
        if variants:
            for v in ("indconv", "ind"):
                _add(f"{name}_{v}", cls, {"recurrent": v}, doc)
        for alias, variant in (aliases or {}).items():
            _add(alias, cls, {"recurrent": variant}, doc)
        cls.registry_name = name
        return cls
    return deco


def _add(name, cls, fixed, doc):
    if name in _CELLS and _CELLS[name][0] is not cls:
        raise KeyError(f"cell name {name!r} registered twice")
    _CELLS[name] = (cls, fixed, doc)


def register_model(name: str):
    def deco(fn):
        if name in _MODELS:
            raise KeyError(f"model name {name!r} registered twice")
        _MODELS[name] = fn
        return fn
    return deco


def _load():
    # Importing the packages runs their register_* decorators.
    from . import cells, models  # noqa: F401


def cell_entry(name: str) -> tuple[type, dict[str, Any]]:
    _load()
    key = name.lower()
    if key not in _CELLS:
        raise KeyError(f"unknown cell {name!r}; available: {', '.join(sorted(_CELLS))}")
    cls, fixed, _ = _CELLS[key]
    return cls, dict(fixed)


def create_cell(name: str, **kw):
    """Build a registered cell by name; keyword arguments go to its constructor."""
    cls, fixed = cell_entry(name)
    clash = {k for k in fixed if k in kw and kw[k] != fixed[k]}
    if clash:
        raise ValueError(f"cell {name!r} fixes {sorted(clash)}={[fixed[k] for k in sorted(clash)]}; "
                         f"use the base name and pass recurrent=... to choose it yourself")
    return cls(**{**kw, **fixed})


def create_model(name: str, **kw):
    """Build a registered model (``stack``, ``msrnn``, ``composite``, ...) from keyword arguments,
    e.g. the ``model`` section of a YAML config."""
    _load()
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](**kw)


def model_from_config(cfg: dict):
    """``{'name': 'stack', 'cell': 'convlstm', ...}`` -> model.  The dict is not modified."""
    cfg = dict(cfg)
    try:
        name = cfg.pop("name")
    except KeyError:
        raise KeyError("model config needs a 'name' key (one of convrnn.list_models())") from None
    return create_model(name, **cfg)


def list_cells() -> dict[str, str]:
    _load()
    return {k: v[2] for k, v in sorted(_CELLS.items())}


def list_models() -> dict[str, str]:
    _load()
    return {k: ((fn.__doc__ or "").strip().splitlines() or [""])[0] for k, fn in sorted(_MODELS.items())}
