"""The YAML config: read, checked against one field table per level, every problem
reported at once with its YAML path; the result is configmodel.py's frozen dataclasses."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from exporter.configcheck import Problems, parse_duration
from exporter.configmodel import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_PER_HOST,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT,
    ApiKeyAuth,
    Auth,
    Config,
    ConfigError,
    PasswordAuth,
    PortalConfig,
    Secret,
    TokenAuth,
)

# The model's names are imported from here by the rest of the exporter.
__all__ = ["DEFAULT_MAX_CONCURRENCY", "DEFAULT_MAX_PER_HOST", "DEFAULT_MAX_RESPONSE_BYTES",
           "DEFAULT_TIMEOUT", "ApiKeyAuth", "Auth", "Config", "ConfigError", "PasswordAuth",
           "PortalConfig", "Secret", "TokenAuth", "duplicate_keys", "load_config",
           "parse_config", "parse_duration"]


REQUIRED = object()  # a Field default: the key must be set


@dataclass(frozen=True)
class Field:
    """One config key: how its value is checked and what it is when absent.

    `convert` None: an auth key, read by _auth together with the other keys of its method
    (only the method in use is read). `secret`: a credential; `KEY_file` may be set
    instead, naming a file that holds it, and its value is never echoed."""

    key: str
    convert: Callable[[Problems, str, Any], Any] | None
    default: Any = None
    secret: bool = False


# Checked in this order (the order of the problems), every key but name and url also
# allowed under `defaults`.
PORTAL_FIELDS = (
    Field("name", Problems.name, REQUIRED),
    Field("url", Problems.url, REQUIRED),
    Field("timeout", Problems.duration, DEFAULT_TIMEOUT),
    Field("dump", Problems.boolean, False),
    Field("history", Problems.boolean, False),
    Field("insecure_skip_verify", Problems.boolean, False),
    Field("max_response_bytes", Problems.positive_int, DEFAULT_MAX_RESPONSE_BYTES),
    Field("ca_file", Problems.ca_file, None),
    Field("timezone", Problems.timezone, None),
    Field("api_key", None, secret=True),
    Field("token", None, secret=True),
    Field("username", None),
    Field("password", None, secret=True),
)
TOP_FIELDS = (
    Field("max_concurrency", Problems.positive_int, DEFAULT_MAX_CONCURRENCY),
    Field("max_requests_per_host", Problems.positive_int, DEFAULT_MAX_PER_HOST),
)
SECRET_KEYS = tuple(f.key for f in PORTAL_FIELDS if f.secret)
PORTAL_KEYS = ({f.key for f in PORTAL_FIELDS} | {k + "_file" for k in SECRET_KEYS})
DEFAULTABLE_KEYS = PORTAL_KEYS - {f.key for f in PORTAL_FIELDS if f.default is REQUIRED}
TOP_KEYS = {"defaults", "portals"} | {f.key for f in TOP_FIELDS}


def _walk(problems: Problems, fields: tuple[Field, ...], vals: Mapping[str, Any],
          paths: Mapping[str, str], where: str) -> dict[str, Any]:
    """The one loop over a field table: each key's checked value, or its default."""
    out: dict[str, Any] = {}
    for f in fields:
        if f.convert is None:
            continue
        if f.key in vals:
            out[f.key] = f.convert(problems, paths[f.key], vals[f.key])
        elif f.default is REQUIRED:
            problems.problem(f"{where}.{f.key}", "is required")
            out[f.key] = None
        else:
            out[f.key] = f.default
    return out


def _portal(problems: Problems, path: str, raw: Any,
            defaults: dict[str, Any]) -> PortalConfig | None:
    if not isinstance(raw, dict):
        problems.problem(path, "must be a mapping with at least name and url")
        return None
    for key in sorted(set(raw) - PORTAL_KEYS, key=str):
        problems.problem(f"{path}.{key}", "unknown key")
    merged: dict[str, Any] = {}
    for key, value in defaults.items():
        merged[key] = (f"defaults.{key}", value)
    for key, value in raw.items():
        if key in PORTAL_KEYS:
            merged[key] = (f"{path}.{key}", value)
    vals = {k: problems.expand(p, v) for k, (p, v) in merged.items()}
    paths = {k: p for k, (p, _) in merged.items()}
    before = len(problems.problems)
    fields = _walk(problems, PORTAL_FIELDS, vals, paths, path)
    auth = _auth(problems, path, vals, paths)
    if (len(problems.problems) != before or fields["name"] is None or fields["url"] is None
            or auth is None):
        return None
    return PortalConfig(auth=auth, **fields)


def _secret_value(
    problems: Problems, vals: dict[str, Any], paths: dict[str, str], key: str
) -> str | None:
    """Value of `key` or of `key_file`; the caller has checked exactly one is set."""
    if key in vals:
        return problems.string(paths[key], vals[key])
    return problems.read_secret_file(paths[key + "_file"], vals[key + "_file"])


def _auth(problems: Problems, path: str, vals: dict[str, Any],
          paths: dict[str, str]) -> Auth | None:
    methods = []
    if "api_key" in vals or "api_key_file" in vals:
        methods.append("api_key")
    if "token" in vals or "token_file" in vals:
        methods.append("token")
    if "username" in vals or "password" in vals or "password_file" in vals:
        methods.append("username/password")
    for k in SECRET_KEYS:
        if k in vals and k + "_file" in vals:
            problems.problem(f"{path}.{k}", f"set either {k} or {k}_file, not both")
            return None
    if not methods:
        problems.problem(
            path,
            "needs one auth method: api_key(_file), token(_file) or username with password(_file)",
        )
        return None
    if len(methods) > 1:
        problems.problem(
            path, "has more than one auth method (" + ", ".join(methods) + "); keep exactly one"
        )
        return None
    method = methods[0]
    if method == "api_key":
        key = _secret_value(problems, vals, paths, "api_key")
        if key is None:
            return None
        if not key.startswith("sk-"):
            # DocSpace routes a Bearer value to its API-key handler only when it starts
            # with sk-; anything else would fail with 401 at every scrape.
            where = paths.get("api_key") or paths["api_key_file"]
            problems.problem(
                where,
                "a DocSpace API key starts with sk-; for a login token use token or token_file",
            )
            return None
        return ApiKeyAuth(Secret(key))
    if method == "token":
        token = _secret_value(problems, vals, paths, "token")
        return TokenAuth(Secret(token)) if token is not None else None
    if "username" not in vals:
        problems.problem(f"{path}.username", "is required with password")
        return None
    if "password" not in vals and "password_file" not in vals:
        problems.problem(f"{path}.password", "is required with username (or password_file)")
        return None
    username = problems.string(paths["username"], vals["username"])
    password = _secret_value(problems, vals, paths, "password")
    if username is None or password is None:
        return None
    return PasswordAuth(username, Secret(password))


def parse_config(
    data: Any,
    *,
    base_dir: Path | str = ".",
    environ: Mapping[str, str] | None = None,
    source: str = "<memory>",
) -> Config:
    """Validate an already-decoded YAML document. Raises ConfigError listing every problem."""
    problems = Problems(Path(base_dir), os.environ if environ is None else environ)
    if data is None:
        raise ConfigError(["(root): the config is empty; it needs a portals list"])
    if not isinstance(data, dict):
        raise ConfigError(["(root): must be a mapping with a portals list"])
    for key in sorted(set(data) - TOP_KEYS, key=str):
        problems.problem(str(key), "unknown key")

    defaults: dict[str, Any] = {}
    raw_defaults = data.get("defaults")
    if raw_defaults is not None:
        if not isinstance(raw_defaults, dict):
            problems.problem("defaults", "must be a mapping")
        else:
            for key in sorted(set(raw_defaults) - DEFAULTABLE_KEYS, key=str):
                hint = " (set it per portal)" if key in ("name", "url") else ""
                problems.problem(f"defaults.{key}", "unknown key" + hint)
            defaults = {k: v for k, v in raw_defaults.items() if k in DEFAULTABLE_KEYS}

    top = _walk(problems, TOP_FIELDS, data, {k: k for k in data if isinstance(k, str)}, "")

    portals: list[PortalConfig] = []
    raw_portals = data.get("portals")
    if raw_portals is None:
        problems.problem("portals", "is required: a list of portals")
    elif not isinstance(raw_portals, list):
        problems.problem("portals", "must be a list")
    elif not raw_portals:
        problems.problem("portals", "is empty; configure at least one portal")
    else:
        seen: dict[str, int] = {}
        for i, raw in enumerate(raw_portals):
            path = f"portals[{i}]"
            portal = _portal(problems, path, raw, defaults)
            name = raw.get("name") if isinstance(raw, dict) else None
            if isinstance(name, str):
                if name in seen:
                    problems.problem(
                        f"{path}.name", f"duplicate name {name!r} (also portals[{seen[name]}])"
                    )
                    portal = None
                else:
                    seen[name] = i
            if portal is not None:
                portals.append(portal)

    if problems.problems:
        raise ConfigError(problems.problems)
    return Config(portals=tuple(portals), source=source, **top)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: config file is not UTF-8 text"]) from None
    try:
        duplicates = duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        what = getattr(exc, "problem", None) or "invalid YAML"
        # Only the position and the parser's complaint: the offending line itself may hold a key.
        raise ConfigError([f"{path}: invalid YAML at {where}: {what}"]) from None
    try:
        config = parse_config(data, base_dir=p.resolve().parent, environ=environ,
                              source=str(path))
    except ConfigError as exc:
        raise ConfigError(duplicates + exc.problems) from None
    if duplicates:
        raise ConfigError(duplicates)
    return config


def duplicate_keys(node: yaml.Node | None) -> list[str]:
    """A problem for every key repeated in a YAML mapping, with its path and lines.

    PyYAML keeps the last of two equal keys without a word, so a portal with `url:` twice
    would silently use the second one."""
    out: list[str] = []
    seen_nodes: set[int] = set()  # an alias repeats a node: walk it once

    def walk(node: yaml.Node, path: str) -> None:
        if id(node) in seen_nodes:
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`
                    walk(value_node, path)
                    continue
                if isinstance(key_node, yaml.ScalarNode):
                    key = str(key_node.value)
                    child = f"{path}.{key}" if path else key
                    line = key_node.start_mark.line + 1
                    where = (key_node.tag, key_node.value)
                    if where in first:
                        out.append(f"{child}: duplicate key (line {line}; first on line "
                                   f"{first[where]}); each key may appear once")
                    else:
                        first[where] = line
                else:
                    child = f"{path}.<key>" if path else "<key>"
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}[{i}]")

    if node is not None:
        walk(node, "")
    return out
