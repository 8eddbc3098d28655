"""Loading configs: defaults → YAML (with ``base:`` chains) → ``--set a.b=c``; coercion to the schema's types."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ..modalities import ModalityConfig, modality_class
from .schema import OskarConfig, default_modalities
from .validation import validate


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> OskarConfig:
    """Defaults, then the YAML at ``path`` (if any), then ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> OskarConfig:
    import_plugins(raw.get("plugins") or [])
    cfg = _build(OskarConfig, {k: v for k, v in raw.items() if k != "modalities"}, "")
    cfg.modalities = _build_modalities(raw.get("modalities"))
    validate(cfg)
    return cfg


def import_plugins(modules: Any) -> None:
    """Import each module of ``plugins:`` (a modality registers itself on import); errors name the entry."""
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise ValueError(f"plugins must be a list of importable module names, got {modules!r}")
    for i, module in enumerate(modules):
        try:
            importlib.import_module(module)
        except Exception as err:  # any failure of a user module is reported under its config entry
            raise ValueError(f"plugins[{i}]: cannot import {module!r} ({type(err).__name__}: {err})") from err


def config_yaml(cfg: OskarConfig) -> str:
    """The resolved config as the YAML text ``load_config`` reads back."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_config(cfg: OskarConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_yaml(cfg))
    return path


def read_mapping(path: Path, kind: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (a config, a sweep spec); errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML's sections over those of its ``base:`` (a path relative to it, itself maybe based), so an
    experiment YAML states only what it changes."""
    data = read_mapping(path, "config")
    base = data.pop("base", None)
    if base is None:
        return data
    parent, chain = base_path(path, base), (*chain, path.resolve())
    if parent in chain:
        raise ValueError(f"{path}: base {base!r} leads back to {parent} (a loop)")
    return _merged(_read_yaml(parent, chain), data)


def base_path(yaml_file: Path, base: Any) -> Path:
    """The config YAML a ``base:`` key of ``yaml_file`` names: relative to that file (absolute as given), the one
    rule for experiment YAMLs and sweep specs; a clear error when it is not a path or not there."""
    if not isinstance(base, str) or not base:
        raise ValueError(f"{yaml_file}: base must be the path of another config YAML, got {base!r}")
    parent = (Path(yaml_file).parent / base).resolve()
    if not parent.is_file():
        raise FileNotFoundError(f"{yaml_file}: base {base!r} not found ({parent})")
    return parent


def _merged(base: dict[str, Any], over: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """``over`` on top of ``base``, mappings merged key by key. Inside a section an explicit empty mapping
    (``model: {align_weights: {}}``) clears the base's field, since merging nothing into it could never undo a
    base's per-key settings; an empty *section* (``budget: {}``) changes nothing."""
    out = dict(base)
    for key, value in over.items():
        merge = isinstance(value, dict) and (value or depth == 0) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value, depth + 1) if merge else value
    return out


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {item!r} must look like section.field=value")
    return key.strip(), yaml.safe_load(text) if text.strip() else ""


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{'.'.join(parents[: i + 1])} is a value, cannot set {key}")
        node = child
    node[leaf] = value


def _build_modalities(raw: Any) -> dict[str, ModalityConfig]:
    # the built-ins are always configured (switch one off with enabled: false);
    # a registered extra modality joins by being named
    result = default_modalities()
    if raw is None:
        return result
    if not isinstance(raw, dict):
        raise ValueError(f"modalities must be a mapping of modality name to settings, got {raw!r}")
    for name, settings in raw.items():
        cls = modality_class(name).config_class
        result[name] = _build(cls, settings or {}, f"modalities.{name}")
    return result


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ValueError(f"unknown config key {where}{unknown[0]} (valid: {sorted(names)})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, name)
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(k): _coerce(item, v, f"{name}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{name}: union-typed config fields are not supported")
    return _coerce_scalar(hint, value, name)


def _coerce_scalar(hint: type, value: Any, name: str) -> Any:
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; users type it that way
        with contextlib.suppress(ValueError):
            value = float(value)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and is_number and float(value).is_integer():
        return int(value)
    if hint is float and is_number:
        return float(value)
    if hint is str and (is_number or isinstance(value, str)):
        return str(value)
    raise ValueError(f"{name} must be {hint.__name__}, got {value!r}")
