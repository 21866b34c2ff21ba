"""Typed configs for every job: dataclasses, YAML presets, dotted overrides, `--dry-run`.

A job declares one dataclass tree (dataclasses next to the component they configure), and calls
`parse_job_config(Cls, argv)`. The resolved config comes from, in order: the dataclass defaults, the YAML
file given with `--config`, then each `--set a.b=c` override (the value is parsed as YAML, so `--set
world.min_objects=3`, `--set splits=[0.8,0.1,0.1]` and `--set out=null` do what they look like).
Unknown keys, wrong types and failed `validate()` checks stop with a `ConfigError` that names the key and
the fix. `--dry-run` prints the resolved config as YAML and exits 0.

    python -m jobs.build_dataset --config configs/dataset_default.yaml --set world.max_objects=6 --dry-run
"""

from __future__ import annotations

import argparse
import sys
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range; the message says how to fix it."""


REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_path(path: str | Path) -> Path:
    """A path named in a config or on a command line: as given when absolute or present from the working
    directory, else relative to the repository root (so `configs/...` and `assets/...` work from anywhere)."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else REPO_ROOT / p


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert) one value against a type annotation; raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} matches none of {[_type_name(a) for a in args]}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return _from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} (write it as [a, b, c])")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot in the mantissa) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys here: {sorted(prefix + k for k in fields)}"
        )
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    missing = [
        prefix + n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing required config key(s) {missing}; set them in the YAML or with --set KEY=VALUE")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """The config as plain Python data (tuples become lists), ready for YAML/JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=c` -> ("a.b", parsed c). The value is YAML, so numbers, booleans, lists and null work."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set world.max_objects=6")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
    return key, value


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                validate: bool = True) -> T:
    """Defaults <- YAML file <- dotted overrides, type-checked, then `validate()` on every section (unless
    `validate=False`: a caller that reads only part of a config validates that part itself)."""
    data = to_dict(cls()) if _all_defaults(cls) else {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; presets live in configs/ (e.g. configs/*.yaml)")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(loaded).__name__}")
        _merge(data, loaded, cls)
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    cfg = _from_dict(cls, data)
    if validate:
        validate_tree(cfg)
    return cfg


def _all_defaults(cls: type) -> bool:
    try:
        cls()
        return True
    except TypeError:
        return False


def _merge(base: dict, extra: dict, cls: type) -> None:
    """Merge YAML into the defaults: config sections (nested dataclasses) merge key by key; any other value,
    mappings included (e.g. world.sizes), is replaced whole, so a preset says exactly what it means."""
    hints = typing.get_type_hints(cls)
    for k, v in extra.items():
        section = hints.get(k)
        if isinstance(v, dict) and isinstance(base.get(k), dict) and dataclasses.is_dataclass(section):
            _merge(base[k], v, section)
        else:
            base[k] = v


def validate_tree(cfg: Any) -> None:
    """Call `validate()` on every dataclass in the tree (children first)."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            validate_tree(v)
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()


def add_config_args(parser: argparse.ArgumentParser, default_config: str | None = None) -> None:
    parser.add_argument("--config", default=default_config, help="YAML preset (see configs/)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="dotted override, repeatable: --set world.max_objects=6",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate, print the resolved config and exit")


def config_from_args(cls: type[T], args: argparse.Namespace, extra: dict[str, Any] | None = None) -> T:
    """Resolve the config; `extra` maps dotted keys to values from job-specific flags (None = not given)."""
    overrides = list(args.overrides)
    for key, value in (extra or {}).items():
        if value is not None:
            overrides.insert(0, f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
    return load_config(cls, args.config, overrides)


def job_config(cls: type[T], args: argparse.Namespace, extra: dict[str, Any] | None = None) -> T | int:
    """A job's resolved config, or the exit code when the job should stop here: 2 after printing the config
    error to stderr, 0 after printing the resolved config for `--dry-run` (which writes nothing)."""
    try:
        cfg = config_from_args(cls, args, extra)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(dump_yaml(cfg))
        return 0
    return cfg


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ------------------------------------------------------------------------------------------------ resume


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and other values are leaves."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _matches(key: str, patterns) -> bool:
    import fnmatch

    return any(key == p or fnmatch.fnmatchcase(key, p) or key.startswith(p + ".") for p in patterns)


def check_resume_config(saved_path: str | Path, cfg: Any, *, safe: tuple[str, ...] = (),
                        allow: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Compare a resumed run's new config with the one it saved (`saved_path`, YAML). Keys matching `safe`
    (dotted names or fnmatch patterns: "grpo.steps", "cluster.*") may change; so may keys the user names in
    `allow` (the job's `--allow-change KEY`); any other change alters what the run means and raises
    ConfigError listing every such key with its old and new value. Returns the accepted changes, as text.
    Keys the saved config does not have (added to the code since) are not compared."""
    saved_path = Path(saved_path)
    if not saved_path.is_file():
        raise ConfigError(f"--resume: {saved_path} is missing, so the run's config cannot be compared; "
                          "this folder holds no run started by this job (start without --resume)")
    try:
        saved = yaml.safe_load(saved_path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--resume: {saved_path} is not readable YAML ({str(exc).splitlines()[0]}); restore it "
                          "from a copy or start the run over with --overwrite") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume: {saved_path} does not hold a config mapping; restore it or use --overwrite")
    old, new = flatten(saved), flatten(to_dict(cfg))
    changed = [(k, old[k], new[k]) for k in new if k in old and old[k] != new[k]]
    refused = [c for c in changed if not _matches(c[0], safe) and not _matches(c[0], allow)]
    if refused:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in refused)
        raise ConfigError(
            f"--resume would change what the run in {saved_path.parent} means: {listed}. Resume with the saved "
            f"values (see {saved_path}), start a new run (another --out, or --overwrite), or accept the change "
            f"knowingly with --allow-change {' --allow-change '.join(k for k, _, _ in refused)}"
        )
    return [f"{k}: {a!r} -> {b!r}" for k, a, b in changed]
