"""What one scrape learned about one portal: a typed outcome per endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar, Union

from exporter.endpoints import BY_NAME, TABLE
from exporter.model import History, PortalSettings, Schedule, Tariff, Task

T = TypeVar("T")


@dataclass(frozen=True)
class Answered(Generic[T]):
    """The endpoint answered with data."""

    value: T


@dataclass(frozen=True)
class Empty:
    """The endpoint answered with nothing: no schedule, no backup or restore task."""


@dataclass(frozen=True)
class Failed:
    """The call failed (or missed the deadline); `reason` is a docspace_scrape_errors reason."""

    reason: str


# None where the endpoint was not asked (history off, settings/tariff neither due nor cached).
Outcome = Union[Answered[T], Empty, Failed, None]  # noqa: UP007 - a generic alias needs Union


@dataclass
class PortalData:
    """What one scrape learned about one portal, one field per endpoint of the table."""

    name: str
    url: str
    duration: float
    schedule: Outcome[Schedule] = None
    backup_progress: Outcome[Task] = None
    restore_progress: Outcome[Task] = None
    history: Outcome[History] = None
    settings: Outcome[PortalSettings] = None
    tariff: Outcome[Tariff] = None
    # IANA zone DocSpace's scheduler uses for this portal; None when unknown
    zone: str | None = None

    def outcome(self, endpoint: str) -> Outcome[Any]:
        out: Outcome[Any] = getattr(self, BY_NAME[endpoint].name)
        return out

    def answer(self, endpoint: str, value: Any) -> None:
        """Record a parsed answer; None (no schedule, no task) is an answer with nothing."""
        setattr(self, BY_NAME[endpoint].name, Empty() if value is None else Answered(value))

    def fail(self, endpoint: str, reason: str) -> None:
        setattr(self, BY_NAME[endpoint].name, Failed(reason))

    @property
    def failed(self) -> dict[str, str]:
        """endpoint -> reason for each endpoint that failed, in table order."""
        return {e.name: o.reason for e in TABLE
                if isinstance(o := getattr(self, e.name), Failed)}

    @property
    def answered(self) -> list[str]:
        """The endpoints that answered (with data or with nothing), in table order."""
        return [e.name for e in TABLE if isinstance(getattr(self, e.name), (Answered, Empty))]

    @property
    def up(self) -> bool:
        # About the backup API only: settings and tariff failures never make it 0.
        return not any(not BY_NAME[e].side for e in self.failed)


def value(outcome: Outcome[T]) -> T | None:
    """The data of an answer; None for an answer with nothing, a failure or no call."""
    return outcome.value if isinstance(outcome, Answered) else None
