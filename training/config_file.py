"""Reading YAML config files into dataclasses: ``key.sub=value`` overrides, unknown keys refused.

Free of torch (only PyYAML), so console scripts report an unreadable or invalid config file
before they import anything heavy; :mod:`training.config` and :mod:`training.pretrain.loop`
define the dataclasses.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def build_dataclass(cls: type, values: dict[str, Any], where: str = "",
                    sections: dict[str, type] | None = None) -> Any:
    """Build config dataclass ``cls`` from YAML values.

    ``sections`` maps keys whose values are nested dataclasses. Unknown keys are refused naming
    them, and numbers YAML left as strings (``1e-4``) are converted where the field is a float.
    """
    if not isinstance(values, dict):
        raise ValueError(f"config section {where or '<root>'!r} must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
                         f"known: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in values.items():
        sub = (sections or {}).get(name)
        if sub is not None:
            kwargs[name] = build_dataclass(sub, value or {}, f"{name}.")
        elif name == "betas":
            kwargs[name] = tuple(float(v) for v in value)
        elif isinstance(fields[name].default, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
            # YAML 1.1 reads "1e-4" (no dot) as a string.
            try:
                kwargs[name] = float(value)
            except ValueError:
                raise ValueError(f"config key {where}{name} must be a number, got {value!r}") from None
        else:
            kwargs[name] = value
    return cls(**kwargs)


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        node = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return values


def read_config(path: str, overrides: list[str] | None, build: Callable[[dict[str, Any]], T]) -> T:
    """Read a YAML config, apply ``key.sub=value`` overrides and build it; errors name the file and key."""
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except OSError as e:
        raise ValueError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"config {path} is not valid YAML: {e}") from None
    try:
        return build(apply_overrides(values, overrides or []))
    except (TypeError, ValueError) as e:
        raise ValueError(f"config {path}: {e}") from None
