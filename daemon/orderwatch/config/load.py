"""Load the YAML config into frozen Settings, reporting every problem as `file:line: key: msg`.

Steps, each collecting problems rather than stopping at the first: read the file and know each
key's line (config_source), apply ORDERWATCH_<SECTION>__<KEY> overrides, expand ${ENV} in the
file's strings, read *_file secrets, make relative paths relative to the config file, validate
with pydantic. Secret values never appear in a message: no message quotes a secret's value, and
a last pass masks any secret that a message might still contain."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import os
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from orderwatch.config.callbacks import load_problem
from orderwatch.config.environment import FILE_OF, SECRET_FILES, expand, overrides, unknown
from orderwatch.config.models import Settings
from orderwatch.config.sink_ids import (
    callback_sink_id,
    callback_spec_problem,
    command_sink_id,
    webhook_sink_id,
)
from orderwatch.config.source import (
    Collector,
    Loc,
    dotted,
    parse,
    read_config,
    reason,
)
from orderwatch.config.unused_secrets import put_back, take_out
from orderwatch.config.watchlist_files import check_watchlists
from orderwatch.core.errors import ConfigError, Problem
from orderwatch.core.files import read_capped
from orderwatch.core.redact import mask_secret_shapes

DEFAULT_PATH = Path("/etc/orderwatch/orderwatch.yaml")
MAX_SECRET = 64 * 1024
SECRET_KEYS = frozenset({"api_key", "secret", "secrets", "state_dsn", "token"})


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str]) -> Path:
    """`-c PATH`, else $ORDERWATCH_CONFIG, else /etc/orderwatch/orderwatch.yaml."""
    return Path(cli_path or environ.get("ORDERWATCH_CONFIG") or DEFAULT_PATH)


def load_settings(
    path: Path,
    environ: Mapping[str, str],
    *,
    import_callbacks: bool = False,
    check_files: bool = False,
    unused_secrets: Collection[str] = (),
) -> Settings:
    """The settings in `path`, ${ENV} expanded and overrides applied; ConfigError holds every
    problem found. `import_callbacks` also imports each callback (commands that deliver):
    one that cannot be loaded is then a located problem like any other. `check_files`
    (check-config) also makes a watchlist that cannot be read one. `unused_secrets` (kinds
    from config.unused_secrets) are left as written: not expanded, not read."""
    c = Collector(str(path))
    data = parse(read_config(path), c)
    base = path.absolute().parent
    return _build(data, c, environ, base, import_callbacks, check_files, unused_secrets)


def load_settings_from_mapping(
    data: Mapping[str, Any], source: str = "<embedded>", environ: Mapping[str, str] | None = None
) -> Settings:
    """The same validation for a config built in code (demo, tests, embedding); no lines."""
    return _build(copy.deepcopy(dict(data)), Collector(source), environ or {}, None)


# --- the steps -----------------------------------------------------------------------------


def _build(
    data: Any,
    c: Collector,
    environ: Mapping[str, str],
    base: Path | None,
    import_callbacks: bool = False,
    check_files: bool = False,
    unused_secrets: Collection[str] = (),
) -> Settings:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise c.fail(None, "the config must be a mapping of sections")
    overrides(data, environ, c)
    unused = take_out(data, unused_secrets)
    data = expand(data, (), environ, c)
    _read_secret_files(data, base, c)
    put_back(data, unused)
    _rebase_paths(data, base, c)
    settings = _validate(data, c)
    if settings is not None:
        _check_sinks(settings, c, import_callbacks)
        if check_files:
            check_watchlists(settings.watchlists, c)
    if c.problems or settings is None:
        problems = _mask_secrets(c.problems, data, c.expanded)
        problems.sort(key=lambda p: (p.file != c.source, p.file, p.line or 0))
        raise ConfigError(problems)
    return settings


def _check_sinks(s: Settings, c: Collector, import_callbacks: bool) -> None:
    """A callback spec's shape, and two entries that would be the same sink (the same id: one
    would never be told); with `import_callbacks`, whether each callback can be loaded."""
    seen: dict[str, Loc] = {}
    named: list[tuple[Loc, str, str | None]] = [
        *((("webhooks", i), webhook_sink_id(w.url), None) for i, w in enumerate(s.webhooks)),
        *((("commands", i), command_sink_id(a), None) for i, a in enumerate(s.commands)),
        *(
            (("callbacks", i), callback_sink_id(spec), callback_spec_problem(spec))
            for i, spec in enumerate(s.callbacks)
        ),
    ]
    for loc, sink_id, problem in named:
        if problem:
            c.add(loc, problem)
        elif sink_id in seen:
            c.add(loc, f"the same sink as {dotted(seen[sink_id])}")
        else:
            seen[sink_id] = loc
    if import_callbacks and s.callbacks:
        for i, spec in enumerate(s.callbacks):
            if not callback_spec_problem(spec) and (problem := load_problem(spec)):
                c.add(("callbacks", i), problem)


def _read_secret_files(data: dict[str, Any], base: Path | None, c: Collector) -> None:
    _secret_file(data, (), "state_dsn_file", base, c)
    if isinstance(runa := data.get("runa"), dict):
        _secret_file(runa, ("runa",), "api_key_file", base, c)
    if isinstance(admin := data.get("admin"), dict):
        _secret_file(admin, ("admin",), "token_file", base, c)
    if isinstance(push := data.get("push"), dict):
        _secret_file(push, ("push",), "secret_file", base, c)
    if isinstance(hooks := data.get("webhooks"), list):
        for i, hook in enumerate(hooks):
            if isinstance(hook, dict):
                _secret_file(hook, ("webhooks", i), "secret_file", base, c)


def _secret_file(
    mapping: dict[str, Any], loc: Loc, file_key: str, base: Path | None, c: Collector
) -> None:
    """Read `<key>_file` into `<key>`; the path stays in the settings, for the record."""
    key, at = SECRET_FILES[file_key], (*loc, file_key)
    if mapping.get(file_key) is None:
        return
    if mapping.get(key) is not None:
        c.add(at, f"give {key} or {file_key}, not both")
        return
    path = _rebase(mapping[file_key], at, base, c)
    if any(p.key == dotted(at) for p in c.problems):
        return  # its path is not what was meant (a ${NAME} not set): reading it says nothing
    if isinstance(path, Path) and "\0" not in str(path):  # NUL: validation says so
        mapping[file_key] = path
        secret = _read_secret(path, at, c)
        if secret is not None:
            mapping[key] = secret


def _read_secret(path: Path, loc: Loc, c: Collector) -> str | None:
    try:
        raw = read_capped(path, MAX_SECRET)
    except OSError as e:
        c.add(loc, f"cannot read {loc[-1]} {path}: {reason(e)}")
        return None
    if len(raw) > MAX_SECRET:
        c.add(loc, f"{path} is larger than 64 KiB")
        return None
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        c.add(loc, f"{path} is not UTF-8 text")
        return None
    if not text.strip():
        c.add(loc, f"{path} is empty")
        return None
    return text


def _rebase(value: Any, loc: Loc, base: Path | None, c: Collector) -> Any:
    """A relative path from the file is relative to the file's directory (from the
    environment, to the working directory); anything else is left for validation."""
    if not isinstance(value, str | os.PathLike) or not str(value):
        return value
    path = Path(value)
    if str(path).startswith("~"):
        with contextlib.suppress(RuntimeError):  # no home directory: leave it as written
            path = path.expanduser()
    if base is None or path.is_absolute() or c.origin(loc) is not None:
        return path
    return base / path


def _rebase_paths(data: dict[str, Any], base: Path | None, c: Collector) -> None:
    for key in ("state_dir", "output_dir"):
        if key in data:
            data[key] = _rebase(data[key], (key,), base, c)
    if isinstance(lists := data.get("watchlists"), list):
        data["watchlists"] = [_rebase(w, ("watchlists", i), base, c) for i, w in enumerate(lists)]


def _validate(data: dict[str, Any], c: Collector) -> Settings | None:
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        said = {p.key for p in c.problems}  # an earlier step's word on a key is the one kept
        for err in e.errors(include_url=False):
            loc: Loc = _where_written(data, tuple(err["loc"]))
            if dotted(loc) in said:
                continue
            if err["type"] == "extra_forbidden":
                unknown(loc, c)
            else:
                c.add(loc, _message(err))
    return None


def _where_written(data: Any, loc: Loc) -> Loc:
    """A secret read from its *_file is reported at that key: the line the user wrote."""
    file_key = FILE_OF.get(str(loc[-1])) if loc else None
    node = data
    for part in loc[:-1] if file_key else ():
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return loc
    if file_key and isinstance(node, dict) and node.get(file_key) is not None:
        return (*loc[:-1], file_key)
    return loc


_PLAIN = {
    "missing": "is required",
    "string_type": "should be a string",
    "tuple_type": "should be a list",
    "list_type": "should be a list",
    "model_type": "should be a mapping of keys",
    "dict_type": "should be a mapping of keys",
    "path_type": "should be a path",
}


def _message(err: Mapping[str, Any]) -> str:
    """Pydantic's message in plain words; the input itself is never quoted."""
    kind = err["type"]
    if kind == "string_type" and isinstance(err.get("input"), int | float | datetime.date):
        return "should be a string (put it in quotes)"
    if kind in _PLAIN:
        return _PLAIN[kind]
    msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    msg = msg.replace("Input should be", "should be")
    return msg[:1].lower() + msg[1:]


def _mask_secrets(problems: list[Problem], data: Any, expanded: dict[str, str]) -> list[Problem]:
    """Secrets become ***; then any other value that came from ${NAME} is shown as ${NAME}, as
    such a variable may hold a secret expanded into the wrong key; then whatever still looks
    like a webhook secret or a Runa key becomes whsec_*** or wg.*** (logs.SECRET_SHAPES)."""
    secrets = sorted({s for s in _secret_strings(data, False) if len(s) >= 4}, key=len)
    from_env = sorted(expanded, key=len)
    out = []
    for p in problems:
        message = p.message
        for secret in reversed(secrets):
            message = message.replace(secret, "***")
        for value in reversed(from_env):
            message = message.replace(value, expanded[value])
        message = mask_secret_shapes(message, "***")
        out.append(dataclasses.replace(p, message=message) if message != p.message else p)
    return out


def _secret_strings(value: Any, secret: bool) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _secret_strings(v, secret or k in SECRET_KEYS)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _secret_strings(v, secret)
    elif secret and isinstance(value, str | SecretStr):
        yield value.get_secret_value() if isinstance(value, SecretStr) else value
    elif secret and value is not None:
        yield str(value)
