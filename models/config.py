"""The one configuration system of every job (render, fine-tune, evaluate), on OmegaConf.

A job's schema is an OmegaConf config in struct mode: built from its dataclasses (training,
rendering) or from its documented defaults YAML (evaluation). Layers are merged onto it in order
(defaults <- a YAML file <- ``key.sub=value`` overrides <- explicit flags), and every leaf remembers
the layer that set it, so ``--print-config`` can show where each value came from. An unknown key
fails the same way in every job, naming the full dotted key. This lives in ``models/`` because that
is the bottom layer every package may import.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import AnyNode, IntegerNode

DEFAULT = "default"
COMMAND_LINE = "command line"


class ConfigError(ValueError):
    """A bad configuration; the message names the offending key."""


@dataclass
class Resolved:
    """A merged config and, per dotted leaf key, the layer its value came from."""

    config: DictConfig
    sources: dict[str, str]
    default_source: str = DEFAULT

    def is_default(self, key: str) -> bool:
        """True when no layer set ``key`` (it holds the schema's default)."""
        return self.sources[key] == self.default_source

    def to_container(self) -> dict[str, Any]:
        return OmegaConf.to_container(self.config, resolve=True)  # type: ignore[return-value]

    def describe(self) -> str:
        return describe(self.to_container(), self.sources)


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b.c=value`` -> (``"a.b.c"``, value), the value parsed as YAML (1e-4, true, [a, b])."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:  # e.g. a brace pattern: take it as the plain string it is
        value = raw
    return key.strip(), value


def nest(key: str, value: Any) -> dict[str, Any]:
    """``("a.b", 1)`` -> ``{"a": {"b": 1}}``."""
    tree: dict[str, Any] = {}
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def overrides_layer(overrides: Iterable[str]) -> list[tuple[str, Any]]:
    """Parsed ``key=value`` overrides, in order (later ones win)."""
    return [parse_override(text) for text in overrides]


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping; a missing file or another top level is a named error."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as error:
        raise ConfigError(f"config file not found: {path}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    return data


def label(path: str | Path) -> str:
    """A config file's name as a source label: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def schema_from_yaml(path: str | Path) -> DictConfig:
    return OmegaConf.create(read_yaml(path))


def leaves(node: DictConfig, prefix: str = "") -> Iterator[str]:
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none():
            yield from leaves(child, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _leaf_items(node: DictConfig, tree: dict, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every leaf a layer sets, checking each key against the schema."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if not isinstance(key, str) or key not in node:
            known = ", ".join(str(k) for k in node) or "(none)"
            raise ConfigError(f"unknown config key {name!r} (known here: {known})")
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            if value is None:  # a section whose keys are all commented out
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} is a section; got {value!r}")
            yield from _leaf_items(child, value, f"{name}.")
        else:
            yield name, value


def _compatible(default: Any, value: Any) -> bool:
    """Type check for untyped (YAML-schema) leaves: the value must fit the default's kind."""
    if default is None or value is None:
        return True  # optional keys: null means "not set"
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) == isinstance(value, bool) or isinstance(default, str)
    if isinstance(default, int | float) and isinstance(value, int | float):
        return isinstance(default, float) or isinstance(value, int)
    if isinstance(default, list | tuple):
        return isinstance(value, list | tuple)
    if isinstance(default, str):
        return isinstance(value, str | int | float)  # e.g. "auto" or a concrete value
    return isinstance(value, type(default))


def _assign(config: DictConfig, key: str, value: Any) -> None:
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(config, parent_key) if parent_key else config
    node = parent._get_node(name)
    if isinstance(node, ListConfig) and isinstance(value, str):
        value = [value] if value else []  # one path / pattern given as a plain string
    elif isinstance(node, IntegerNode) and isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(node, AnyNode | ListConfig) and not node._is_none():
        default = OmegaConf.to_container(node) if isinstance(node, ListConfig) else node._value()
        if not _compatible(default, value):
            kind = type(default).__name__
            raise ConfigError(f"config key {key!r} expects a {kind}, got {value!r}")
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
    try:
        parent[name] = copy.deepcopy(value)
    except OmegaConfBaseException as error:
        reason = str(error).splitlines()[0]
        raise ConfigError(f"config key {key!r}: {reason}") from None


def compose(
    schema: DictConfig,
    layers: Iterable[tuple[str, dict | list[tuple[str, Any]] | None]],
    default_source: str = DEFAULT,
) -> Resolved:
    """Merge ``layers`` (label, nested mapping or list of (dotted key, value)) onto ``schema``."""
    config = copy.deepcopy(schema)
    OmegaConf.set_struct(config, True)
    sources = dict.fromkeys(leaves(config), default_source)
    for label, layer in layers:
        if not layer:
            continue
        items = layer if isinstance(layer, list) else None
        if items is None:
            if not isinstance(layer, dict):
                raise ConfigError(f"{label}: expected a mapping of config keys, got {layer!r}")
            items = list(_leaf_items(config, layer, ""))
        else:  # dotted keys: check each against the schema the same way
            items = [
                item for key, value in items for item in _leaf_items(config, nest(key, value), "")
            ]
        for key, value in items:
            _assign(config, key, value)
            sources[key] = label
    return Resolved(config, sources, default_source)


def describe(values: dict[str, Any], sources: dict[str, str], prefix: str = "") -> str:
    """The resolved config as YAML, each leaf followed by ``# <- where it came from``."""
    lines: list[str] = []
    indent = "  " * prefix.count(".")
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in sources:
            lines.append(f"{indent}{key}:")
            lines.append(describe(value, sources, f"{name}."))
            continue
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
        lines.append(f"{indent}{key}: {text}".ljust(48) + f"  # <- {sources.get(name, DEFAULT)}")
    return "\n".join(line for line in lines if line)


def comments(path: str | Path) -> dict[str, str]:
    """Dotted key -> the comment documenting it in place in a YAML file (for generated help)."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last = None
    for line in Path(path).read_text().splitlines():
        body, _, note = line.partition(" #")
        stripped = body.strip()
        if not stripped:
            if last and note.strip() and line.startswith(" " * 20):  # continued comment
                found[last] += " " + note.strip()
            continue
        if stripped.startswith("#") or ":" not in stripped:
            continue
        indent = len(body) - len(body.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = stripped.split(":", 1)[0].strip()
        dotted = ".".join([name for _, name in stack] + [key])
        if not stripped.split(":", 1)[1].strip():
            stack.append((indent, key))
        if note.strip():
            found[dotted] = note.strip()
            last = dotted
    return found
