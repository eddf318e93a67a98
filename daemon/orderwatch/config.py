"""Load the YAML config into frozen Settings, reporting every problem as `file:line: key: msg`.

Steps, each collecting problems rather than stopping at the first: read the file (size-capped),
compose it to know each key's line, expand ${ENV}, apply ORDERWATCH_<SECTION>__<KEY>
overrides, read *_file secrets, make relative paths relative to the config file, validate.
Secret values never appear in a message."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orderwatch.errors import ConfigError, Problem
from orderwatch.settings import Settings, WebhookSettings

DEFAULT_PATH = Path("/etc/orderwatch/orderwatch.yaml")
MAX_CONFIG = 1024 * 1024
MAX_SECRET = 64 * 1024
FILE_SECRETS = {"api_key_file": "api_key", "secret_file": "secret", "state_dsn_file": "state_dsn"}
PATH_KEYS = frozenset({"state_dir", "output_dir", "token_file"})
_ENV_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
Loc = tuple[str | int, ...]


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str]) -> Path:
    return Path(cli_path or environ.get("ORDERWATCH_CONFIG") or DEFAULT_PATH)


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _Collector:
    def __init__(self, source: str, lines: dict[Loc, int]) -> None:
        self.source = source
        self.lines = lines
        self.problems: list[Problem] = []
        self.sources: dict[Loc, str] = {}  # values that came from environment overrides

    def line_of(self, loc: Loc) -> int | None:
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return None

    def add(self, loc: Loc, message: str, source: str | None = None) -> None:
        source = source or next(
            (src for n in range(len(loc), 0, -1) if (src := self.sources.get(loc[:n]))), None
        )
        line = None if source else self.line_of(loc)
        self.problems.append(Problem(source or self.source, line, dotted(loc) or None, message))


def _node_lines(node: yaml.Node | None, loc: Loc, out: dict[Loc, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = (*loc, str(k.value))
            out[key] = k.start_mark.line + 1
            _node_lines(v, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[(*loc, i)] = v.start_mark.line + 1
            _node_lines(v, (*loc, i), out)


def _parse(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([Problem(source, line, None, f"YAML syntax error: {problem}")]) from None
    lines: dict[Loc, int] = {}
    _node_lines(node, (), lines)
    return data, lines


def _expand(value: Any, loc: Loc, environ: Mapping[str, str], c: _Collector) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            name = m.group(1)
            if name not in environ:
                c.add(loc, f"environment variable {name} is not set")
                return ""
            return environ[name]

        return _ENV_RE.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, (*loc, str(k)), environ, c) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*loc, i), environ, c) for i, v in enumerate(value)]
    return value


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The settings model that validates the mapping at `loc` (None if not a model)."""
    model: type[BaseModel] = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        nested = _nested_model(field.annotation)
        if nested is None:
            return None
        model = nested
    return model


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def allowed_keys(loc: Loc) -> list[str]:
    model = _model_at(loc)
    if model is None:
        return []
    keys = [f.alias or n for n, f in model.model_fields.items()]
    if model is Settings:
        keys.append("state_dsn_file")
    if model is WebhookSettings:
        keys.append("secret_file")
    return keys


def _unknown(loc: Loc, c: _Collector, source: str | None = None) -> None:
    near = difflib.get_close_matches(str(loc[-1]), allowed_keys(loc[:-1]), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    c.add(loc, f"unknown key {str(loc[-1])!r}{hint}", source)


def _overrides(data: dict[str, Any], environ: Mapping[str, str], c: _Collector) -> None:
    for name, raw in sorted(environ.items()):
        if not name.startswith("ORDERWATCH_") or name == "ORDERWATCH_CONFIG":
            continue
        parts = [p.lower() for p in name.removeprefix("ORDERWATCH_").split("__")]
        loc: Loc = tuple(parts)
        source = f"env:{name}"
        if len(parts) > 2 or not all(parts):
            c.add(loc, "expected ORDERWATCH_<SECTION>__<KEY>", source)
            continue
        if parts[0] not in allowed_keys(()) or (
            len(parts) == 2 and parts[1] not in allowed_keys((parts[0],))
        ):
            _unknown(loc if parts[0] in allowed_keys(()) else loc[:1], c, source)
            continue
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        c.sources[loc] = source
        if len(parts) == 1:
            data[parts[0]] = value
        else:
            section = data.setdefault(parts[0], {})
            if not isinstance(section, dict):
                c.add(loc[:1], "is not a mapping", source)
                continue
            section[parts[1]] = value


def _read_secret(path_value: Any, loc: Loc, base: Path | None, c: _Collector) -> str | None:
    if not isinstance(path_value, str) or not path_value:
        c.add(loc, "must be a file path")
        return None
    path = _resolve(path_value, base)
    try:
        if path.stat().st_size > MAX_SECRET:
            c.add(loc, f"{path} is larger than 64 KiB")
            return None
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        c.add(loc, f"cannot read {loc[-1]} {path}: {reason}")
        return None
    if not text:
        c.add(loc, f"{path} is empty")
        return None
    return text


def _secret_files(mapping: dict[str, Any], loc: Loc, base: Path | None, c: _Collector) -> None:
    for file_key, key in FILE_SECRETS.items():
        if file_key not in mapping:
            continue
        if mapping.get(key) is not None:
            c.add((*loc, file_key), f"give {key} or {file_key}, not both")
            mapping.pop(file_key)
            continue
        secret = _read_secret(mapping.pop(file_key), (*loc, file_key), base, c)
        if secret is not None:
            mapping[key] = secret


def _resolve(value: str, base: Path | None) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() or base is None else base / p


def _prepare(data: dict[str, Any], base: Path | None, c: _Collector) -> None:
    for k, v in list(data.items()):
        if k in PATH_KEYS and isinstance(v, str):
            data[k] = str(_resolve(v, base))
    _secret_files(data, (), base, c)
    for section in ("runa", "admin"):
        sub = data.get(section)
        if isinstance(sub, dict):
            _secret_files(sub, (section,), base, c)
            if isinstance(sub.get("token_file"), str):
                sub["token_file"] = str(_resolve(sub["token_file"], base))
    if isinstance(data.get("watchlists"), list):
        data["watchlists"] = [
            _resolve(w, base) if isinstance(w, str) else w for w in data["watchlists"]
        ]
    if isinstance(data.get("webhooks"), list):
        for i, hook in enumerate(data["webhooks"]):
            if isinstance(hook, dict):
                _secret_files(hook, ("webhooks", i), base, c)


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if err["type"] == "missing":
        return "is required"
    return msg[0].lower() + msg[1:] if msg else msg


def _validate(data: dict[str, Any], c: _Collector) -> Settings | None:
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        for err in e.errors(include_input=False, include_url=False):
            loc: Loc = tuple(err["loc"])
            if err["type"] == "extra_forbidden":
                _unknown(loc, c)
            else:
                c.add(loc, _message(err))
    return None


def _build(
    data: Any, source: str, lines: dict[Loc, int], environ: Mapping[str, str], base: Path | None
) -> Settings:
    c = _Collector(source, lines)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([Problem(source, 1, None, "the config must be a mapping of sections")])
    data = _expand(data, (), environ, c)
    _overrides(data, environ, c)
    _prepare(data, base, c)
    settings = _validate(data, c)
    if c.problems or settings is None:
        raise ConfigError(sorted(c.problems, key=lambda p: (p.file, p.line or 0)))
    return settings


def load_settings(path: Path, environ: Mapping[str, str]) -> Settings:
    """The settings in `path`, with environment expansion and overrides."""
    source = str(path)
    try:
        if path.stat().st_size > MAX_CONFIG:
            raise ConfigError([Problem(source, None, None, "config is larger than 1 MiB")])
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise ConfigError([Problem(source, None, None, f"cannot read config: {reason}")]) from None
    data, lines = _parse(text, source)
    return _build(data, source, lines, environ, path.resolve().parent)


def load_settings_from_mapping(
    data: dict[str, Any], source: str = "<embedded>", environ: Mapping[str, str] | None = None
) -> Settings:
    """The same validation for a config built in code (demo, tests, embedding)."""
    import copy

    return _build(copy.deepcopy(data), source, {}, environ if environ is not None else {}, None)
