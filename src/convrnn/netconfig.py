"""Network configs, typed: every key of a ``net`` dict is checked against the signature of the model
builder its ``name`` selects.

A config names its network as a plain dict, ``model: net: {name: stack, cell: convlstm, layers: 2,
...}``; its keys are the keyword arguments of the builder registered under ``name``
(:func:`convrnn.registry.model_entry`): ``RecurrentStack.__init__``, ``CompositeModel.__init__`` and
the presets, which pass ``**kw`` on to ``RecurrentStack``.  Those signatures are typed, and
jsonargparse (the parser under LightningCLI) reads them, following ``**kw`` into the class it is
passed to.  :func:`check_net` builds one jsonargparse parser per builder (cached) and runs each key
through it, so a value from the command line (``--model.net.channels 16``, a string) gets the same
type and the same check as in a YAML file, and a wrong key or value fails with one line that names
the key, the model and the expected type.

Why not a jsonargparse class type for ``net`` (``class_path`` / ``init_args``)?  The choice of
builder is data (``name``), aliases must keep working, and the configs and the checkpoints' saved
hyperparameters keep the short ``{name: ..., key: value}`` form.  So the ``net`` argument of
:class:`convrnn.train.PredictionTask` stays a ``dict[str, Any]`` (jsonargparse reads each override
as YAML, ``16`` -> 16) and is typed here, once, against the builder the dict names:
:class:`~convrnn.train.PredictionTask` calls :func:`check_net`, and so does the command line before it
builds anything.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import re
from collections.abc import Mapping
from typing import Any

from .registry import list_models, model_aliases, model_entry


@functools.lru_cache(maxsize=None)
def builder_signature(builder) -> tuple[dict[str, inspect.Parameter], Any, bool]:
    """``(parameters by name, jsonargparse parser, open)`` of a registered builder.  ``open`` is True
    when the builder takes ``**kw`` that jsonargparse could not follow: unknown keys then pass."""
    from jsonargparse import ArgumentParser
    from jsonargparse._parameter_resolvers import get_signature_parameters

    is_class = inspect.isclass(builder)
    resolved = get_signature_parameters(builder, "__init__" if is_class else None)
    params = {p.name: p for p in resolved}
    own = inspect.signature(builder).parameters.values()
    explicit = {p.name for p in own if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    open_ = any(p.kind == p.VAR_KEYWORD for p in own) and set(params) <= explicit
    parser = ArgumentParser(exit_on_error=False)
    if is_class:
        parser.add_class_arguments(builder, fail_untyped=False)
    else:
        parser.add_function_arguments(builder, fail_untyped=False)
    return params, parser, open_


def type_name(annotation: Any) -> str:
    """``int | collections.abc.Sequence[int]`` -> ``int | Sequence[int]``."""
    if annotation is inspect.Parameter.empty:
        return "any value"
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return re.sub(r"\b(?:collections\.abc|typing)\.", "", text).replace("NoneType", "None")


def plain(value: Any) -> Any:
    """Tuples -> lists and mappings -> dicts, recursively: the YAML form of a value."""
    if isinstance(value, Mapping) or hasattr(value, "as_dict"):
        value = value.as_dict() if hasattr(value, "as_dict") else value
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _model(net: Any, where: str) -> tuple[str, Any, dict]:
    if not isinstance(net, Mapping):
        raise TypeError(f"{where} must be a mapping like {{name: stack, cell: convlstm, ...}}, got {net!r}")
    cfg = dict(net)
    name = cfg.pop("name", None)
    if not isinstance(name, str):
        raise ValueError(f"{where}.name must name a registered model ({', '.join(list_models())}; "
                         f"`convrnn models` describes them), got {name!r}")
    try:
        return name, model_entry(name), cfg
    except KeyError:
        close = difflib.get_close_matches(name, [*list_models(), *model_aliases()], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{where}.name: unknown model {name!r}{hint}; available: "
                         f"{', '.join(list_models())}") from None


def check_net(net: Mapping, where: str = "model.net") -> dict:
    """The network config ``net`` with every value checked against, and converted to, the type its
    builder declares (``'16'`` -> 16 for an int, ``[64, 64]`` stays a list); only the given keys are
    kept.  Raises ValueError naming the key, the model and the expected type."""
    name, builder, cfg = _model(net, where)
    params, parser, open_ = builder_signature(builder)
    from jsonargparse import ArgumentError

    out: dict[str, Any] = {"name": name}
    for key, value in cfg.items():
        if key not in params:
            if open_:
                out[key] = value
                continue
            close = difflib.get_close_matches(key, params, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}.{key}: model {name!r} has no argument {key!r}{hint}; its arguments: "
                             f"{', '.join(params)}")
        try:
            out[key] = plain(parser.parse_object({key: value}, defaults=False)[key])
        except (ArgumentError, TypeError, ValueError):
            raise ValueError(f"{where}.{key}: model {name!r} expects {type_name(params[key].annotation)}, "
                             f"got {value!r}") from None
    return out


def effective_net(net: Mapping) -> dict:
    """Every argument the network is built with: the builder's defaults overlaid by ``net`` (checked),
    under the canonical model name (aliases resolved)."""
    name, builder, _ = _model(net, "net")
    params, _, _ = builder_signature(builder)
    given = check_net(net)
    out = {"name": model_aliases().get(name, name)}
    out.update({k: plain(p.default) for k, p in params.items() if p.default is not inspect.Parameter.empty})
    out.update({k: v for k, v in given.items() if k != "name"})
    return out


def net_differences(a: Mapping, b: Mapping) -> list[str]:
    """The arguments on which two network configs build different networks, as ``key: A vs B``
    (defaults filled in, aliases resolved); empty when they build the same network."""
    ea, eb = effective_net(a), effective_net(b)
    return [f"{k}: {ea.get(k, '(unset)')!r} vs {eb.get(k, '(unset)')!r}"
            for k in sorted(set(ea) | set(eb), key=lambda k: (k != "name", k)) if ea.get(k) != eb.get(k)]
