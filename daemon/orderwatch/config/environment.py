"""What the environment adds to the config file: `ORDERWATCH_<SECTION>__<KEY>` overrides,
and `${NAME}` references expanded in the file's strings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from orderwatch.config.keys import allowed_keys, section_model, unknown_key, wants_text
from orderwatch.config.source import Collector, Loc, parse_value

MIN_MASKED = 6  # shorter values from ${NAME} ("info", "5m") are shown: they hold no secret
SECRET_FILES = {
    "api_key_file": "api_key",
    "secret_file": "secret",
    "state_dsn_file": "state_dsn",
    "token_file": "token",
}
# ORDERWATCH_* variables that are not overrides: the config path, what the command sink sets
# for its children (which may well run `orderwatch add`), and the test suite's own.
NOT_OVERRIDES = frozenset(
    {"CONFIG", "EVENT", "EVENT_ID", "ORDER_ID", "STATUS", "TEST_PG", "REQUIRE_POSTGRES"}
)
_ENV_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")
FILE_OF = {key: file_key for file_key, key in SECRET_FILES.items()}


def overrides(data: dict[str, Any], environ: Mapping[str, str], c: Collector) -> None:
    """ORDERWATCH_<KEY> and ORDERWATCH_<SECTION>__<KEY> replace what the file says."""
    for name in sorted(environ):
        rest = name.removeprefix("ORDERWATCH_")
        if rest == name or rest in NOT_OVERRIDES:
            continue
        source, loc = f"env:{name}", tuple(rest.lower().split("__"))
        if len(loc) > 2 or not all(loc):
            c.add((), "expected ORDERWATCH_<KEY> or ORDERWATCH_<SECTION>__<KEY>", source)
        elif _known_override(loc, c, source):
            target = data if len(loc) == 1 else _section(data, str(loc[0]))
            if target is None:
                continue
            try:
                value = _override_value(environ[name], loc)
            except ValueError as e:
                c.add(loc, str(e), source)
                continue
            _set_override(target, loc, value, c, source)


def _known_override(loc: Loc, c: Collector, source: str) -> bool:
    if loc[0] not in allowed_keys(()):
        unknown(loc[:1], c, source)
        return False
    if len(loc) == 2 and section_model(str(loc[0])) is None:
        c.add(loc[:1], "is not a section: set it whole, as a YAML flow value", source)
        return False
    if len(loc) == 2 and loc[1] not in allowed_keys(loc[:1]):
        unknown(loc, c, source)
        return False
    return True


def _section(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    if data.get(name) is None:
        data[name] = {}
    section = data[name]
    return section if isinstance(section, dict) else None  # validation reports the file's


def _set_override(target: dict[str, Any], loc: Loc, value: Any, c: Collector, source: str) -> None:
    key = str(loc[-1])
    target[key] = value
    c.env[loc] = source
    partner = SECRET_FILES.get(key) or FILE_OF.get(key)
    if partner and (*loc[:-1], partner) not in c.env:
        target.pop(partner, None)  # the override replaces the file's other form of the secret


def _override_value(raw: str, loc: Loc) -> Any:
    """A YAML scalar or flow value; kept as written for text keys (an API key of digits, a
    date-like api_version), where only `null`/`~` mean None. ValueError when too large."""
    if wants_text(loc):
        return None if raw in ("null", "~") else raw
    try:
        return parse_value(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def expand(value: Any, loc: Loc, environ: Mapping[str, str], c: Collector) -> Any:
    if loc in c.env:
        return value  # overrides come from the environment already
    if isinstance(value, str):
        return _ENV_RE.sub(lambda m: _substitute(m, loc, environ, c), value)
    if isinstance(value, dict):
        return {str(k): expand(v, (*loc, str(k)), environ, c) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, (*loc, i), environ, c) for i, v in enumerate(value)]
    return value


def _substitute(m: re.Match[str], loc: Loc, environ: Mapping[str, str], c: Collector) -> str:
    name = m.group(1)
    if m.group(0) == "$${":
        return "${"
    if name is None:
        c.add(loc, "'${' must start a ${NAME} reference (write $${ for a literal ${)")
        return m.group(0)
    if name not in environ:
        c.add(loc, f"environment variable {name} is not set")
        return ""
    if len(environ[name]) >= MIN_MASKED:
        c.expanded[environ[name]] = f"${{{name}}}"
    return environ[name]


def unknown(loc: Loc, c: Collector, source: str | None = None) -> None:
    c.add(loc, unknown_key(loc), source)
