"""Reading YAML config files into dataclasses: ``key.sub=value`` overrides, unknown keys refused.

Free of torch (only PyYAML), so console scripts report an unreadable or invalid config file
before they import anything heavy; :mod:`training.config` and :mod:`training.pretrain.loop`
define the dataclasses on :class:`ConfigFile`, their one ``to_dict``/``from_dict``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self, TypeVar

import yaml

T = TypeVar("T")


class ConfigFile:
    """Base of the run-config dataclasses (``TrainConfig``, ``PretrainConfig``): dict and YAML round trips.

    ``SECTIONS`` maps keys whose values are nested config dataclasses; ``RENAMED_KEYS`` maps keys
    of older files to the field that replaced them, so shipped configs and old checkpoints still load.
    """

    SECTIONS: ClassVar[Mapping[str, type]] = {}
    RENAMED_KEYS: ClassVar[Mapping[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        return build_dataclass(cls, values, sections=cls.SECTIONS, renamed=cls.RENAMED_KEYS)

    @classmethod
    def load(cls, path: str, overrides: list[str] | None = None) -> Self:
        """Read a YAML file (``key.sub=value`` overrides applied); errors name the file and the key."""
        return read_config(path, overrides, cls.from_dict)

    def save(self, path: str) -> None:
        """Write the config as YAML (lists for tuples), keys in field order."""
        with open(path, "w") as f:
            yaml.safe_dump(_plain(self.to_dict()), f, sort_keys=False)


def renamed_keys(values: dict[str, Any], renamed: Mapping[str, str]) -> dict[str, Any]:
    """``values`` with the older keys of ``renamed`` under their new names; both names at once must agree."""
    values = dict(values)
    for old, new in renamed.items():
        if old not in values:
            continue
        value = values.pop(old)
        if new in values and values[new] != value:
            raise ValueError(f"config keys {old} (the older name of {new}) and {new} disagree: "
                             f"{value!r} vs {values[new]!r}; keep {new}")
        values[new] = value
    return values


def build_dataclass(cls: type, values: dict[str, Any], where: str = "",
                    sections: Mapping[str, type] | None = None, renamed: Mapping[str, str] | None = None) -> Any:
    """Build config dataclass ``cls`` from YAML values.

    ``sections`` maps keys whose values are nested dataclasses; ``renamed`` maps older keys to
    their fields. Unknown keys are refused naming them, and numbers YAML left as strings
    (``1e-4``) are converted where the field is a float.
    """
    if not isinstance(values, dict):
        raise ValueError(f"config section {where or '<root>'!r} must be a mapping, got {type(values).__name__}")
    values = renamed_keys(values, renamed or {})
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


def _plain(value: Any) -> Any:
    """YAML-safe copy: tuples become lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
