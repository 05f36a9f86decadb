"""YAML loading that remembers where every value came from.

Inventory and playbook errors must name ``file:line``; ruamel.yaml's round-trip loader keeps the
line of every mapping key and sequence item, and pydantic's error locations are walked back through
the loaded tree to find it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence, get_args, get_origin

from .errors import ConfigError


def load(path: Path, what: str) -> Any:
    """Parse ``path``; a syntax error becomes one ConfigError naming file and line."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found", path=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}", path=str(path)) from None
    try:
        return YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "malformed YAML"
        if problem.startswith("found duplicate key"):  # ruamel quotes both values: never echo a value
            problem = re.sub(r" with value .*", "", problem, flags=re.S)
        raise ConfigError(f"malformed YAML: {problem}", path=str(path), line=line) from None
    except YAMLError as exc:
        raise ConfigError(f"malformed YAML: {exc}", path=str(path)) from None


def line_of(tree: Any, loc: Sequence[Any]) -> int | None:
    """The 1-based line of the deepest node of ``loc`` that exists in ``tree``."""
    line: int | None = None
    node = tree
    for key in loc:
        lc = getattr(node, "lc", None)
        try:
            if isinstance(node, dict) and key in node:
                if lc is not None:
                    line = lc.key(key)[0] + 1
                node = node[key]
            elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
                if lc is not None:
                    line = lc.item(key)[0] + 1
                node = node[key]
            else:
                break
        except (KeyError, IndexError, TypeError):
            break
    if line is None:
        lc = getattr(tree, "lc", None)
        if lc is not None and getattr(lc, "line", None) is not None:
            line = lc.line + 1
    return line


def dotted(loc: Sequence[Any]) -> str:
    """``('environments', 'prod', 'hosts', 0, 'ssh')`` -> ``environments.prod.hosts[0].ssh``."""
    out = ""
    for key in loc:
        if isinstance(key, int):
            out += f"[{key}]"
        else:
            out += ("." if out else "") + str(key)
    return out


def config_error(exc: Any, tree: Any, path: Path, prefix: Sequence[Any] = (), model: Any = None) -> ConfigError:
    """Turn the first error of a pydantic ValidationError into one located ConfigError: the one
    place pydantic's wording is translated (its "Value error, " prefix, model names and location
    tuples never reach the user). ``model`` (the type validated) lets an unknown key suggest the
    known one it is closest to."""
    err = exc.errors()[0]
    loc = [*prefix, *[k for k in err["loc"] if not (isinstance(k, str) and k.startswith("function-"))]]
    # pydantic puts union-member tags and model names in loc; keep only keys that exist
    clean: list[Any] = []
    node = tree
    for key in loc:
        if isinstance(node, dict) and key in node:
            node = node[key]
            clean.append(key)
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
            clean.append(key)
        elif err["type"] == "missing" and key == loc[-1]:
            clean.append(key)
        elif err["type"] == "extra_forbidden" and key == loc[-1]:
            clean.append(key)
    msg = re.sub(r" or instance of \w+", "", err["msg"])  # pydantic's model names mean nothing to a user
    msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)  # a validator's own ValueError text
    kind = err["type"]
    where = dotted(clean) or "top level"
    if kind == "missing":
        text = f"missing key '{clean[-1] if clean else where}' in {dotted(clean[:-1]) or 'top level'}"
    elif kind == "extra_forbidden":
        from .suggest import did_you_mean

        known = known_keys(model, [k for k in err["loc"] if not (isinstance(k, str) and k.startswith("function-"))][:-1])
        text = f"unknown key '{clean[-1]}' in {dotted(clean[:-1]) or 'top level'}{did_you_mean(str(clean[-1]), known)}"
    else:
        text = f"{where}: {msg}"
    return ConfigError(text, path=str(path), line=line_of(tree, clean))


def known_keys(model: Any, loc: Sequence[Any]) -> list[str]:
    """The keys the pydantic type ``model`` accepts at ``loc`` (a pydantic error's location, relative
    to ``model``): followed through optional, union, list and dict types; [] when unknown."""
    if model is None:
        return []
    types = _members(model)
    for key in loc:
        found: list[Any] = []
        named = [t for t in types if isinstance(key, str) and getattr(t, "__name__", None) == key]
        if named:  # a union member's tag in the location, not a key
            types = named
            continue
        for t in types:
            fields = getattr(t, "model_fields", None)
            if fields is not None and isinstance(key, str):
                for name, info in fields.items():
                    if key in (name, info.alias):
                        found.extend(_members(info.annotation))
            elif get_origin(t) in (list, tuple) and isinstance(key, int):
                found.extend(m for arg in get_args(t)[:1] for m in _members(arg))
            elif get_origin(t) is dict and isinstance(key, str):
                found.extend(m for arg in get_args(t)[1:2] for m in _members(arg))
        types = found
    out: list[str] = []
    for t in types:
        for name, info in (getattr(t, "model_fields", None) or {}).items():
            out.append(info.alias or name)
    return out


def _members(tp: Any) -> list[Any]:
    """``tp`` itself, or the members of a union / Optional / Annotated."""
    import types as pytypes
    from typing import Annotated, Union

    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin is Union or origin is pytypes.UnionType:
        return [m for arg in get_args(tp) for m in _members(arg)]
    return [tp]
