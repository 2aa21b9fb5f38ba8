"""One registry for cells and one for models, timm-style.

    >>> from convrnn import create_model, create_cell
    >>> cell = create_cell("convlstm_indconv", in_channels=1, channels=8, size=(16, 16))
    >>> model = create_model("stack", cell="gem", layers=2, channels=8, frame_size=(16, 16))

A cell file registers its class once with :func:`register_cell`, naming its variants; every name
resolves to ``(class, fixed keyword arguments)``.  A model file registers a builder with
:func:`register_model`.  This module is a leaf: it imports no cell and no model.  The package's
``__init__`` imports :mod:`convrnn.cells` and :mod:`convrnn.models`, whose imports run the
decorators, so the registries are full as soon as ``convrnn`` is imported.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

VARIANT_SUFFIXES = ("indconv", "ind")

_CELLS: dict[str, tuple[type, dict[str, Any], str]] = {}
_MODELS: dict[str, Callable] = {}
_MODEL_ALIASES: dict[str, str] = {}


def register_cell(name: str, variants: bool = True, aliases: dict[str, str] | None = None):
    """Class decorator: register ``name`` and, if ``variants``, ``name_indconv`` and ``name_ind``
    (Hadamard recurrent terms in the gates / everywhere, docs/models.md §1).  ``aliases`` maps
    extra names (the papers' spellings, e.g. ``convindconvlstm``) to a variant."""
    def deco(cls):
        doc = _first_line(cls.__doc__)
        _add(name, cls, {}, doc)  # the base name leaves `recurrent` free (default 'conv')
        if variants:
            for v in VARIANT_SUFFIXES:
                _add(f"{name}_{v}", cls, {"recurrent": v}, doc)
        for alias, variant in (aliases or {}).items():
            _add(alias, cls, {"recurrent": variant}, doc)
        cls.registry_name = name
        return cls
    return deco


def _first_line(doc: str | None) -> str:
    return ((doc or "").strip().splitlines() or [""])[0]


def _add(name, cls, fixed, doc):
    if name in _CELLS and _CELLS[name][0] is not cls:
        raise KeyError(f"cell name {name!r} registered twice")
    _CELLS[name] = (cls, fixed, doc)


def register_model(name: str, aliases: tuple[str, ...] = ()):
    """Decorator for a model builder (a function or class taking keyword arguments).  ``aliases``
    are older names that configs may still use; they resolve to ``name``."""
    def deco(fn):
        for key in (name, *aliases):
            if key in _MODELS or key in _MODEL_ALIASES:
                raise KeyError(f"model name {key!r} registered twice")
        _MODELS[name] = fn
        _MODEL_ALIASES.update({a: name for a in aliases})
        return fn
    return deco


def cell_entry(name: str) -> tuple[type, dict[str, Any]]:
    """``(class, fixed keyword arguments)`` of a registered cell name (case-insensitive)."""
    key = name.lower() if isinstance(name, str) else name
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


def model_entry(name: str) -> Callable:
    """The builder registered under ``name`` or one of its aliases."""
    key = _MODEL_ALIASES.get(name, name)
    if key not in _MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))}")
    return _MODELS[key]


def create_model(name: str, **kw):
    """Build a registered model (``stack``, ``msrnn``, ``composite``, ...) from keyword arguments,
    e.g. the ``model`` section of a YAML config.  The model keeps them as ``model.config``
    (``{'name': name, **kw}``, a copy), so it can be saved and rebuilt without pickling
    (:meth:`convrnn.Forecaster.save_pretrained`)."""
    model = model_entry(name)(**kw)
    model.config = {"name": name, **copy.deepcopy(kw)}
    return model


def model_from_config(cfg: dict):
    """``{'name': 'stack', 'cell': 'convlstm', ...}`` -> model.  The dict is not modified."""
    cfg = dict(cfg)
    try:
        name = cfg.pop("name")
    except KeyError:
        raise KeyError("model config needs a 'name' key (one of convrnn.list_models())") from None
    return create_model(name, **cfg)


def list_cells() -> dict[str, str]:
    """Every registered cell name (variants and aliases included) -> the first line of its docstring."""
    return {k: v[2] for k, v in sorted(_CELLS.items())}


def list_models() -> dict[str, str]:
    """Every registered model name (aliases excluded) -> the first line of its docstring."""
    return {k: _first_line(fn.__doc__) for k, fn in sorted(_MODELS.items())}


def model_aliases() -> dict[str, str]:
    """Older model names still accepted -> the name they resolve to."""
    return dict(sorted(_MODEL_ALIASES.items()))


def cell_families() -> dict[str, type]:
    """Base cell name -> class, one entry per registered class (variants and aliases left out)."""
    return {cls.registry_name: cls for cls, _, _ in _CELLS.values()}
