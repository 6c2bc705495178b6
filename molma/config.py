"""Typed configuration: dataclasses loaded from YAML, overridden from the command line, validated.

Every stage (reward-model training, RL training, evaluation, demo, MBHI) has a config dataclass next to
the code that uses it. This module turns YAML and ``key=value`` overrides into those dataclasses with
clear errors: unknown key (with the known ones listed), wrong type, out-of-range value, each naming the
file and the dotted key.

Why hand-written: ``dataclasses`` + PyYAML cover the types; pulling in hydra/omegaconf for this would
add a large dependency for ~150 lines.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A configuration problem, naming the source (file or command line) and the dotted key."""


class RangeError(ValueError):
    """A value outside its valid range (raised by :func:`check_range` from ``__post_init__``);
    ``key`` is the top-level field it belongs to, so :func:`from_dict` can name where it was set."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid interval of a numeric config field, bounds included unless ``*_open``; NaN and
    infinities are never valid. Config dataclasses declare one per numeric field in ``RANGES`` (for
    lists, tuples and dicts of numbers it applies to every element) and call :func:`check_ranges`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def check(self, name: str, value: float) -> None:
        check_range(name, value, self.low, self.high, self.low_open, self.high_open)


# common ranges
ANY_FINITE = Range()
POSITIVE = Range(0.0, low_open=True)  # (0, inf)
NON_NEGATIVE = Range(0.0)  # [0, inf)
COUNT = Range(1)  # integers >= 1
UNIT = Range(0.0, 1.0)  # [0, 1]
FRACTION = Range(0.0, 1.0, high_open=True)  # [0, 1)
OPEN_UNIT = Range(0.0, 1.0, low_open=True)  # (0, 1]
SEED = Range(0, 2**32 - 1)  # what numpy accepts


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and convert where lossless (int -> float, list -> tuple)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors: list[tuple[Any, ConfigError]] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append((arg, err))
        if len(errors) == 1:  # X | None: X's own message (e.g. an unknown key inside a nested mapping)
            raise errors[0][1]
        for arg, err in errors:  # the alternative of the value's shape says what is wrong inside it
            if isinstance(value, Mapping) and (dataclasses.is_dataclass(arg) or get_origin(arg) is dict):
                raise err
            if isinstance(value, (list, tuple)) and get_origin(arg) in (list, tuple):
                raise err
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {list(choices)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, source=where)
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        args = get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            number = float(value)  # YAML 1.1 reads "1e-5" (no dot) as a string
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type[T], data: Mapping[str, Any], source: str = "config",
              key_sources: Mapping[str, str] | None = None) -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and type errors raise :class:`ConfigError`.

    Range checks live in each dataclass's ``__post_init__`` (raising ``ValueError``); they are reported
    with the source here. ``key_sources`` names where each top-level key came from (a file, the command
    line) when that differs from ``source``.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
    key_sources = key_sources or {}
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{key_sources.get(unknown[0], source)}: unknown key(s) {', '.join(map(repr, unknown))} for "
            f"{cls.__name__}; known keys: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(value, hints[name], f"{key_sources.get(name, source)}: {name}")
              for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        key = getattr(err, "key", None)
        raise ConfigError(f"{key_sources.get(key, source) if key else source}: {err}") from err


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-dict form (tuples as lists), suitable for YAML/JSON and content hashing."""

    return _plain(dataclasses.asdict(config))


def _plain(v: Any) -> Any:
    """Tuples as lists, recursively (for YAML and JSON)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


class _Dotted(dict):
    """A mapping made by dotted overrides (``a.b=x``): it updates ``a`` (its default included) rather
    than replacing it."""


class _Whole(dict):
    """A mapping written whole on the command line (``a={b: x}``, ``a={}``): it replaces ``a``, also the
    file's value, instead of merging into it."""


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` / ``a.b=value`` strings (values are YAML: ``3``, ``1e-5``, ``[a, b]``, ``true``)
    into a nested dict. ``a.b=x`` changes key ``b`` of ``a`` and keeps its other keys (also those of
    ``a``'s default); ``a={b: x}`` replaces ``a``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"command line: override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        if not key:
            raise ConfigError(f"command line: override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
            if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
                value = float(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"command line: cannot parse value of {key!r}: {err}") from err
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, _Dotted())
            if not isinstance(node, dict):
                raise ConfigError(f"command line: {key!r} sets inside a non-mapping value")
        node[parts[-1]] = _Whole(value) if isinstance(value, dict) else value
    return out


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and not isinstance(v, _Whole) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _seed_defaults(cls: Any, data: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Put the default of each dict-valued field that a dotted override (``prompts.help=x``) changes
    into ``data`` (unless ``data`` sets it), so the override merges into the default."""
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        return data
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = get_type_hints(cls)
    out = dict(data)
    for key, value in over.items():
        if not isinstance(value, _Dotted) or key not in fields:
            continue
        tp = hints[key]
        if get_origin(tp) in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
        if dataclasses.is_dataclass(tp):
            base = out.get(key)
            if base is None or isinstance(base, Mapping):
                out[key] = _seed_defaults(tp, dict(base or {}), value)
        elif (tp is dict or get_origin(tp) is dict) and key not in out:
            default = _field_default(fields[key])
            if isinstance(default, Mapping):
                out[key] = dict(default)
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config file as a mapping. A top-level ``extends: OTHER.yaml`` (a path relative to this file)
    starts from that file's settings: mappings merge key by key, anything else (lists included) is replaced
    by this file's value."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    if "extends" not in data:
        return data
    parent = data.pop("extends")
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{path}: extends: expected the path of another YAML config, got {parent!r}")
    parent_path = path.parent / parent
    if not parent_path.exists():
        raise ConfigError(f"{path}: extends: no such file {parent_path}")
    chain = (*_seen, path.resolve())
    if parent_path.resolve() in chain:
        raise ConfigError(f"{path}: extends: {parent_path} extends this file again (a cycle: "
                          f"{' -> '.join(str(p) for p in (*chain, parent_path.resolve()))})")
    return _merge(read_yaml(parent_path, chain), data)


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    section: str | None = None,
    *,
    extra_keys: Iterable[str] = (),
    extras: dict[str, Any] | None = None,
) -> T:
    """Load ``cls`` from an optional YAML file (or one ``section`` of it), then apply overrides.

    ``overrides`` is either ``["key=value", ...]`` from the command line or an already-nested mapping.
    ``extra_keys``: top-level keys that are not fields of ``cls`` but mean something to the caller (e.g.
    ``threads``, or ``processes`` that a trainer writes into a run's ``config.yaml``); they are taken out
    of the file and the overrides instead of being refused, and their values (an override's over the
    file's) are put into ``extras`` when it is given.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        data = read_yaml(path)
        source = str(path)
        if section is not None:
            if section not in data:
                raise ConfigError(f"{path}: no section {section!r} (sections: {', '.join(data)})")
            data = data[section] or {}
            source = f"{path} [{section}]"
    over = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    for key in extra_keys:
        for found in (data, over):
            if key in found:
                value = found.pop(key)
                if extras is not None:
                    extras[key] = value
    key_sources = {key: source for key in data}  # where each key was set, for the error messages
    if over:
        for key, value in over.items():  # a mapping set in the file and changed on the command line: both
            merged = key in key_sources and isinstance(value, Mapping) and isinstance(data[key], Mapping)
            key_sources[key] = f"{source} + command line" if merged else "command line"
        data = _merge(_seed_defaults(cls, data, over), over)
        source = f"{source} + command line"
    return from_dict(cls, data, source=source, key_sources=key_sources)


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` if ``value`` is not a finite number in [low, high] (or open
    bounds). NaN and infinities are always out of range."""
    key = re.match(r"[A-Za-z_]\w*", name)
    key = key.group(0) if key else None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RangeError(f"{name} must be a number, got {value!r}", key)
    if not math.isfinite(float(value)):
        raise RangeError(f"{name} must be a finite number, got {value}", key)
    if low is not None and (value < low or (low_open and value == low)):
        raise RangeError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}", key)
    if high is not None and (value > high or (high_open and value == high)):
        raise RangeError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}", key)


def _numbers(name: str, value: Any) -> Iterator[tuple[str, Any]]:
    """``(dotted name, number)`` for a number, or the numbers inside a list, tuple or dict (nested
    dataclasses check themselves)."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, numbers.Real):
        yield name, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _numbers(f"{name}[{i}]", item)
    elif isinstance(value, Mapping):
        for k, item in value.items():
            yield from _numbers(f"{name}.{k}", item)


def check_ranges(obj: Any, ranges: Mapping[str, Range] | None = None) -> None:
    """Check every number in the fields of dataclass ``obj`` (also inside lists, tuples and dicts):
    finite, and inside the field's :class:`Range` from ``ranges`` (default: ``obj.RANGES``). For
    ``__post_init__``; raises ``ValueError`` naming the field (``prompt_mix.help``, ``adam_betas[1]``)."""
    ranges = getattr(obj, "RANGES", {}) if ranges is None else ranges
    for f in dataclasses.fields(obj):
        declared = ranges.get(f.name, ANY_FINITE)
        for name, number in _numbers(f.name, getattr(obj, f.name)):
            declared.check(name, number)


def _is_numeric_type(tp: Any) -> bool:
    if tp is bool:
        return False
    if tp in (int, float):
        return True
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is dict:
        return len(args) == 2 and _is_numeric_type(args[1])
    return any(_is_numeric_type(a) for a in args if a is not Ellipsis)


def numeric_fields(cls: type) -> list[str]:
    """Names of the fields of dataclass ``cls`` that hold numbers (alone or in lists, tuples, dicts),
    i.e. those that need a :class:`Range`."""
    hints = get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if f.init and _is_numeric_type(hints[f.name])]


# ------------------------------------------------------------------------------------- key documentation
# Each config field is documented where it is declared: a ``field(metadata={"help": ...})`` (TRL style),
# else the attribute docstring under it, else the comment at the end of its line, else the comment lines
# right above it (up to a section heading ``# --- name``). :func:`field_help` reads these from the class's
# source, so the dataclasses stay plain (no metadata boilerplate on ~150 fields) and their documentation
# cannot drift from what --help and ``molma config`` print.


def _comment_of(line: str) -> str | None:
    """The text of the comment that ends ``line`` (``#`` inside strings ignored), or None."""
    import io
    import tokenize

    try:
        for tok in tokenize.generate_tokens(io.StringIO(line).readline):
            if tok.type == tokenize.COMMENT:
                return tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    return None


def _source_help(cls: type) -> dict[str, str]:
    import ast
    import inspect
    import textwrap

    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    tree = ast.parse(textwrap.dedent("".join(lines)))
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out: dict[str, str] = {}
    for i, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        after = body[i + 1] if i + 1 < len(body) else None
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and \
                isinstance(after.value.value, str):
            out[name] = " ".join(after.value.value.split())
            continue
        trailing = _comment_of(lines[node.end_lineno - 1])
        above: list[str] = []
        j = node.lineno - 2
        while j >= 0 and lines[j].strip().startswith("#"):
            text = lines[j].strip().lstrip("#").strip()
            if text.startswith("---"):  # a section heading ("# --- losses"), not this field's help
                break
            above.insert(0, text)
            j -= 1
        text = trailing or " ".join(above)
        if text:
            out[name] = text
    return out


def field_help(cls: type) -> dict[str, str]:
    """``{field: help}`` of dataclass ``cls`` (and the classes it inherits from; see the comment above)."""
    out: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        out.update(_source_help(klass))
    for f in dataclasses.fields(cls):
        if f.metadata.get("help"):
            out[f.name] = str(f.metadata["help"])
    return out


def _nested_dataclass(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if get_origin(tp) in (Union, types.UnionType):
        found = [a for a in get_args(tp) if dataclasses.is_dataclass(a) and isinstance(a, type)]
        return found[0] if len(found) == 1 else None
    return None


def _default_text(f: dataclasses.Field) -> str:
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "required"
    value = _field_default(f)
    if dataclasses.is_dataclass(value):
        return type(value).__name__ + "()"
    return yaml.safe_dump(_plain(value), default_flow_style=True, width=10**6).strip().removesuffix(
        "\n...").removesuffix(" ...")


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    """One config key: dotted ``key``, ``type`` and ``default`` as text, ``help`` ('' when undocumented)."""

    key: str
    type: str
    default: str
    help: str


def config_keys(cls: type, prefix: str = "") -> list[KeyDoc]:
    """Every key of config dataclass ``cls`` in declaration order; the fields of a nested config dataclass
    (``lora``) follow it as dotted keys (``lora.r``)."""
    hints = get_type_hints(cls)
    helps = field_help(cls)
    out: list[KeyDoc] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        type_text = re.sub(r"\b(typing|builtins|molma\.[\w.]+)\.", "", _type_name(tp) if isinstance(tp, type)
                           else str(tp))
        out.append(KeyDoc(prefix + f.name, type_text, _default_text(f), helps.get(f.name, "")))
        nested = _nested_dataclass(tp)
        if nested is not None:
            out.extend(config_keys(nested, prefix=f"{prefix}{f.name}."))
    return out


def format_config_keys(cls: type, width: int = 100, defaults: bool = True) -> str:
    """The keys of ``cls`` as text for ``--help`` epilogs and ``molma config``: one entry per key
    (``key (type, default X): help``), help wrapped and indented."""
    import textwrap

    lines = []
    for doc in config_keys(cls):
        head = f"  {doc.key}" + (f" = {doc.default}" if defaults else "")
        if doc.help:
            lines.append(textwrap.fill(f"{head}: {doc.help}", width=width, subsequent_indent="      ",
                                       break_on_hyphens=False))
        else:
            lines.append(head)
    return "\n".join(lines)
