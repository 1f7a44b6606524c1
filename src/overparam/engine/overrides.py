"""Check config overrides (``--set key=value``) against the value types and ranges of the presets.

The expected type of a key is inferred from its values in every preset of the experiment:

- ``bool`` stays ``bool``; ``int`` stays ``int`` (``1.5``, ``True`` or ``"3"`` are refused); a key
  whose preset values include a float is a float, which accepts an int (stored as a float, so that
  ``lr=1`` and ``lr=1.0`` are one config); floats must be finite; ``str`` stays ``str``;
- a list whose elements share one type is a list of that type, of any length (a tuple is taken as a
  list); a list of mixed elements (``[0.5, [2, 0]]``) is a fixed-length record of those types; an
  empty list in every preset accepts any list;
- a dict whose values share one type must keep the preset's keys and may add keys of that type; a
  dict of mixed values must keep the preset's keys, each of its own type.

Ranges: a number whose preset values (in every preset, every list element) are all positive must be
positive, all non-negative must be non-negative.  ``Experiment.bounds`` declares an inclusive range
``(low, high)`` (``None`` for no limit) for a key that needs more; it replaces the generic rule for
every number of that key.  Every int must fit in 64 bits; a key whose list is non-empty in every
preset must stay non-empty.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from overparam.engine.experiment import Config, Experiment


_WORDS: dict[str, Any] = {
    "true": True,
    "false": False,
    "none": None,
    "null": None,
    "nan": math.nan,
    "inf": math.inf,
    "infinity": math.inf,
}


def parse_value(text: str) -> Any:
    """A ``--set`` value: a Python/JSON literal, where the bare words ``true``/``false``/``null``/
    ``nan``/``inf`` (any case) may appear, also inside lists and dicts; any other text is a string.
    """
    try:
        return _literal(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError):
        return text


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id.lower() in _WORDS:
        return _WORDS[node.id.lower()]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict) and None not in node.keys:
        pairs = zip(node.keys, node.values, strict=True)
        return {_literal(k): _literal(v) for k, v in pairs if k is not None}
    raise ValueError(f"not a literal: {ast.dump(node)}")


@dataclass(frozen=True)
class Spec:
    """The expected shape of a config value.

    ``kind`` is ``"bool"``, ``"int"``, ``"float"``, ``"str"``, ``"list"``, ``"record"`` (fixed-length
    list of ``items``), ``"dict"`` (values of ``items[0]``, at least ``keys``), ``"fields"`` (dict
    with exactly ``keys``, each of the matching ``items``) or ``"any"``.  Numbers lie in
    ``[low, high]`` (``low`` excluded when ``open_low``).
    """

    kind: str
    items: tuple[Spec, ...] = ()
    keys: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    open_low: bool = False


ANY = Spec("any")
INT64_MAX = 2**63 - 1
"""The largest integer a config value may hold: every int reaches torch or numpy as 64 bits."""


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "dict"
    return "any"


def infer(samples: Sequence[Any], bounds: tuple[Any, Any] | None = None) -> Spec:
    """The :class:`Spec` that every value in ``samples`` (a key's preset values) satisfies."""
    kinds = {_kind(v) for v in samples}
    if len(kinds) != 1 or kinds == {"any"}:
        return ANY
    kind = kinds.pop()
    if kind in ("bool", "str"):
        return Spec(kind)
    if kind == "number":
        return _number(samples, bounds)
    if kind == "dict":
        return _mapping(samples, bounds)
    return _sequence(samples, bounds)


def _number(samples: Sequence[Any], bounds: tuple[Any, Any] | None) -> Spec:
    kind = "int" if all(isinstance(v, int) for v in samples) else "float"
    if bounds is not None:
        return Spec(kind, low=bounds[0], high=bounds[1])
    if all(v > 0 for v in samples):
        return Spec(kind, low=0, open_low=True)
    if all(v >= 0 for v in samples):
        return Spec(kind, low=0)
    return Spec(kind)


def _sequence(samples: Sequence[Any], bounds: tuple[Any, Any] | None) -> Spec:
    elements = [e for s in samples for e in s]
    if not elements:
        return Spec("list", (ANY,))
    joined = infer(elements, bounds)
    if joined is not ANY or all(_kind(e) == "any" for e in elements):
        return Spec("list", (joined,))
    lengths = {len(s) for s in samples}
    if len(lengths) != 1:
        return Spec("list", (ANY,))
    width = lengths.pop()
    return Spec("record", tuple(infer([s[i] for s in samples], bounds) for i in range(width)))


def _mapping(samples: Sequence[Any], bounds: tuple[Any, Any] | None) -> Spec:
    keys = tuple(sorted(set.intersection(*(set(map(str, s)) for s in samples))))
    values = [v for s in samples for v in s.values()]
    joined = infer(values, bounds) if values else ANY
    if joined is not ANY or not values:
        return Spec("dict", (joined,), keys)
    every = tuple(sorted(set.union(*(set(map(str, s)) for s in samples))))
    if every != keys:
        return Spec("dict", (ANY,), keys)
    return Spec("fields", tuple(infer([s[k] for s in samples], bounds) for k in keys), keys)


def _range(spec: Spec) -> str:
    if spec.low is not None and spec.high is not None:
        return f" in [{spec.low}, {spec.high}]"
    if spec.low is not None:
        return f" {'>' if spec.open_low else '>='} {spec.low}"
    return f" <= {spec.high}" if spec.high is not None else ""


def _short(spec: Spec) -> str:
    if spec.kind in ("int", "float"):
        return spec.kind + _range(spec)
    if spec.kind == "list":
        return "list" if spec.items[0] is ANY else f"list of {_short(spec.items[0])}"
    if spec.kind == "record":
        return "[" + ", ".join(_short(s) for s in spec.items) + "]"
    if spec.kind == "dict":
        keys = f" (keys {', '.join(spec.keys)})" if spec.keys else ""
        inner = "" if spec.items[0] is ANY else f" of {_short(spec.items[0])}"
        return f"dict{keys}{inner}"
    if spec.kind == "fields":
        return (
            "{"
            + ", ".join(f"{k}: {_short(s)}" for k, s in zip(spec.keys, spec.items, strict=True))
            + "}"
        )
    return spec.kind


def describe(spec: Spec) -> str:
    """What ``spec`` expects, in words: ``"an int > 0"``, ``"a list of float"``."""
    if spec.kind == "bool":
        return "true or false"
    if spec.kind == "str":
        return "a string"
    if spec.kind == "any":
        return "any value"
    if spec.kind == "float":
        return "a finite " + _short(spec)
    if spec.kind == "record":
        return "a list " + _short(spec)
    return ("an " if spec.kind == "int" else "a ") + _short(spec)


class _Mismatch(Exception):
    def __init__(self, where: str, value: Any) -> None:
        self.where, self.value = where, value


def _in_range(spec: Spec, value: float) -> bool:
    if spec.low is not None and (value <= spec.low if spec.open_low else value < spec.low):
        return False
    return spec.high is None or value <= spec.high


def _check(spec: Spec, value: Any, where: str) -> Any:
    """``value`` normalized to ``spec`` (int to float, tuple to list); :class:`_Mismatch` if not."""
    kind = _kind(value)
    if spec.kind == "any":
        return list(value) if isinstance(value, tuple) else value
    if spec.kind in ("bool", "str") and kind == spec.kind:
        return value
    if spec.kind == "int" and kind == "number" and isinstance(value, int):
        if _in_range(spec, value) and abs(value) <= INT64_MAX:
            return value
    if spec.kind == "float" and kind == "number" and math.isfinite(value):
        if _in_range(spec, value):
            return float(value)
    if spec.kind == "list" and kind == "list":
        return [_check(spec.items[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if spec.kind == "record" and kind == "list" and len(value) == len(spec.items):
        return [
            _check(s, v, f"{where}[{i}]")
            for i, (s, v) in enumerate(zip(spec.items, value, strict=True))
        ]
    if spec.kind in ("dict", "fields") and kind == "dict" and set(spec.keys) <= set(value):
        return _check_mapping(spec, value, where)
    raise _Mismatch(where, value)


def _check_mapping(spec: Spec, value: Mapping[Any, Any], where: str) -> dict[str, Any]:
    if spec.kind == "fields":
        if set(value) != set(spec.keys):
            raise _Mismatch(where, value)
        types = dict(zip(spec.keys, spec.items, strict=True))
        return {k: _check(types[k], v, f"{where}[{k!r}]") for k, v in value.items()}
    return {k: _check(spec.items[0], v, f"{where}[{k!r}]") for k, v in value.items()}


def value_spec(experiment: Experiment, key: str) -> Spec:
    """The :class:`Spec` of config ``key``, inferred from every preset of ``experiment``."""
    samples = [config[key] for config in experiment.presets.values() if key in config]
    return infer(samples, experiment.bounds.get(key))


def _received(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_overrides(experiment: Experiment, overrides: Mapping[str, Any] | None) -> Config:
    """``overrides`` checked and normalized against the presets of ``experiment``.

    Raises:
        ValueError: for an unknown key, or a value of the wrong type or range, naming the key, the
            expected type and the value received.
    """
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ValueError(
            f"`overrides` must be a mapping of config keys to values, got "
            f"{type(overrides).__name__}"
        )
    known = sorted({k for config in experiment.presets.values() for k in config})
    checked: Config = {}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ValueError(
                f"unknown config key {key!r} for {experiment.name}; known: {', '.join(known)}"
            )
        spec = value_spec(experiment, key)
        try:
            checked[key] = _check(spec, value, key)
        except _Mismatch as bad:
            inner = "" if bad.where == key else f" ({bad.where} is {bad.value!r})"
            huge = isinstance(bad.value, int) and abs(bad.value) > INT64_MAX
            raise ValueError(
                f"config key {key!r} of {experiment.name} must be {describe(spec)}, "
                f"got {_received(value) if not inner else repr(value)}{inner}"
                + (" (beyond the 64-bit integer range)" if huge else "")
            ) from None
        _check_not_empty(experiment, key, spec, checked[key])
    return checked


def _check_not_empty(experiment: Experiment, key: str, spec: Spec, value: Any) -> None:
    """An empty list for a key whose list is non-empty in every preset is refused: the run would
    measure nothing and judge its claims on no data."""
    samples = [config[key] for config in experiment.presets.values() if key in config]
    if value == [] and samples and all(isinstance(s, (list, tuple)) and s for s in samples):
        raise ValueError(
            f"config key {key!r} of {experiment.name} must be {describe(spec)} with at least one "
            "element, got [] (list)"
        )


def check_bounds(name: str, presets: Mapping[str, Config], bounds: Mapping[str, Any]) -> None:
    """Validate an experiment's ``bounds`` declaration: known keys, ``(low, high)`` with low <= high."""
    keys = {k for config in presets.values() for k in config}
    unknown = sorted(set(bounds) - keys)
    if unknown:
        raise ValueError(
            f"`bounds` of experiment {name!r} name keys absent from its presets: {unknown}"
        )
    for key, pair in bounds.items():
        ok = isinstance(pair, tuple) and len(pair) == 2
        ok = ok and all(
            v is None or (isinstance(v, (int, float)) and math.isfinite(v)) for v in pair
        )
        if not ok or (pair[0] is not None and pair[1] is not None and pair[0] > pair[1]):
            raise ValueError(
                f"`bounds[{key!r}]` of experiment {name!r} must be (low, high) with finite numbers "
                f"or None and low <= high, got {pair!r}"
            )
