"""What a config is: frozen dataclasses (portals, their auth, the limits) and the error that
lists every problem. Reading and checking the YAML is config.py's job."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_TIMEOUT = 10.0
# Calls in flight at once, all portals together (one worker thread each). ~300 keeps one
# CPU busy at 200 ms per call and lets 100 portals' 300 calls go out in one wave; more
# threads only add GIL contention and ~40 kB of RSS each (benchmarks/README.md).
DEFAULT_MAX_CONCURRENCY = 320
DEFAULT_MAX_PER_HOST = 8
# Each answer is a few hundred bytes; a megabyte is far beyond any real schedule or
# history and keeps a hostile or broken portal from filling the exporter's memory.
DEFAULT_MAX_RESPONSE_BYTES = 1 << 20


class Secret:
    """A credential: usable by the client, invisible to repr(), str() and logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ApiKeyAuth:
    """DocSpace API key, sent as `Authorization: Bearer sk-...`."""

    key: Secret

    def secrets(self) -> tuple[str, ...]:
        return (self.key.reveal(),)


@dataclass(frozen=True)
class TokenAuth:
    """Personal access token from POST /api/2.0/authentication, sent as `Authorization: <token>`."""

    token: Secret

    def secrets(self) -> tuple[str, ...]:
        return (self.token.reveal(),)


@dataclass(frozen=True)
class PasswordAuth:
    """User name and password: the exporter logs in and caches the token."""

    username: str
    password: Secret

    def secrets(self) -> tuple[str, ...]:
        return (self.password.reveal(),)


Auth = ApiKeyAuth | TokenAuth | PasswordAuth


@dataclass(frozen=True)
class PortalConfig:
    name: str
    url: str
    auth: Auth = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    dump: bool = False
    history: bool = False
    ca_file: str | None = None
    insecure_skip_verify: bool = False
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    # IANA zone that overrides the one the portal reports (GET /api/2.0/settings).
    timezone: str | None = None

    @property
    def auth_method(self) -> str:
        return {ApiKeyAuth: "api_key", TokenAuth: "token", PasswordAuth: "password"}[
            type(self.auth)
        ]


@dataclass(frozen=True)
class Config:
    portals: tuple[PortalConfig, ...]
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_requests_per_host: int = DEFAULT_MAX_PER_HOST
    source: str = "<memory>"

    def portal(self, name: str) -> PortalConfig | None:
        for p in self.portals:
            if p.name == name:
                return p
        return None

    def secrets(self) -> tuple[str, ...]:
        out: list[str] = []
        for p in self.portals:
            out.extend(p.auth.secrets())
        return tuple(s for s in out if s)


class ConfigError(Exception):
    """Every problem found in a config, each prefixed with its YAML path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))
