"""Hot reload: what changed between two configurations, which of it applies live, and the
reload itself (on SIGHUP).

Most of `router.yaml` applies to a running router without dropping a connection: workers and
discovery (through the membership: new workers join with slow start, removed ones drain),
weights, engines, the policy and its knobs, health, load, retries, timeouts, drain, session
keys, auth keys, the admin token, history settings other than `history.enabled` and
`history.recall.max_connections` (among them `history.access`), `proxy.trusted_proxies`, the
client limits other than `limits.keepalive_timeout` (header and body timeouts, the connection
cap). A few keys are fixed when the app, its sockets or its store are built (`RESTART_KEYS`); a
reload logs each of them as needing a restart and keeps its running value. So is a first
`admin.token` on a router started without one: the admin listener is opened at start only
when a token is set.

An invalid file changes nothing: the running configuration stays and one log line names
what is wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from router.config import Settings, load_settings, parse_settings
from router.errors import ConfigError

if TYPE_CHECKING:
    from router.root import Router

log = logging.getLogger("kvrouter.reload")

RESTART_KEYS: tuple[str, ...] = (
    "listen",  # the listening socket
    "store",  # the session store and its connection pool
    "metrics.prefix",  # every collector's name
    "limits.max_body_bytes",  # the app's request size limit
    "limits.max_connections_per_worker",  # the connection pools' bounds
    "limits.keepalive_timeout",  # given to aiohttp's server when it is built
    "proxy.prefixes",  # the app's routes
    "history.enabled",  # the app's routes
    "history.recall.max_connections",  # the embeddings client's connection bound
    "shutdown_grace",  # the HTTP server's shutdown timeout
    "logging",  # the log handler's format and the app's access-log middleware
    # access control
    "admin.listen",  # the admin API's listening socket
)


def _opens_a_listener(key: str, old: Any, new: Any) -> bool:
    """A first admin token: the admin listener it needs is opened at start only."""
    return key == "admin.token" and old is None and new is not None


@dataclass(frozen=True, slots=True)
class Change:
    key: str
    old: Any
    new: Any

    @property
    def live(self) -> bool:
        """Applied by a reload; False: takes effect at the next restart."""
        if _opens_a_listener(self.key, self.old, self.new):
            return False
        return not any(
            self.key == fixed or self.key.startswith(fixed + ".") for fixed in RESTART_KEYS
        )

    def describe(self, width: int = 60) -> str:
        if self.key == "workers":
            what = _workers_difference(self.old or [], self.new or [])
        else:
            what = f"{_short(self.old, width)} -> {_short(self.new, width)}"
        return f"{self.key}: {what} [{'live' if self.live else 'restart'}]"


def _workers_difference(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> str:
    def by_name(workers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {w.get("name") or w["url"].partition("://")[2]: w for w in workers}

    before, after = by_name(old), by_name(new)
    parts = [
        f"{sign}{name}"
        for sign, names in (
            ("+", [n for n in after if n not in before]),
            ("-", [n for n in before if n not in after]),
            ("~", [n for n in after if n in before and after[n] != before[n]]),
        )
        for name in names
    ]
    return " ".join(parts)


def _short(value: Any, width: int) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, Mapping) and tree and prefix != "custom_metrics":
        for name, value in tree.items():
            yield from _leaves(value, f"{prefix}.{name}" if prefix else str(name))
    else:
        yield prefix, tree


def changes(old: Settings, new: Settings) -> list[Change]:
    """Every key whose value differs, in file order; lists (workers, keys) are one key."""
    before = dict(_leaves(old.model_dump(mode="json")))
    after = dict(_leaves(new.model_dump(mode="json")))
    keys = list(after) + [k for k in before if k not in after]
    missing = object()
    return [
        Change(key, before.get(key), after.get(key))
        for key in keys
        if before.get(key, missing) != after.get(key, missing)
    ]


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def effective(old: Settings, new: Settings) -> Settings:
    """`new`, with every restart-only key kept at its running value."""
    merged = new.model_dump(mode="json")
    wanted = dict(_leaves(merged))
    running = dict(_leaves(old.model_dump(mode="json")))
    for key, value in running.items():
        if not Change(key, value, wanted.get(key)).live:
            _set_path(merged, key, value)
    return parse_settings(merged, "<reload>", env={})


def one_line(err: ConfigError) -> str:
    """The error's lines as one: `invalid configuration in F: a.b: msg; c: msg`."""
    head, *rest = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
    return f"{head} {'; '.join(rest)}".strip()


class Reloader:
    """Re-reads `path` and applies what changed to `root` (called on SIGHUP)."""

    def __init__(self, root: Router, path: str | Path) -> None:
        self._root = root
        self._path = Path(path)

    def reload(self) -> list[Change] | None:
        """Apply the file's changes; None when the file is invalid (nothing changed)."""
        metrics = self._root.metrics
        try:
            new = load_settings(self._path)
        except ConfigError as err:
            metrics.reloads.labels("invalid").inc()
            log.error("reload refused, the running configuration stays: %s", one_line(err))
            return None
        found = changes(self._root.settings, new)
        if not found:
            metrics.reloads.labels("unchanged").inc()
            log.warning("reload of %s: nothing changed", self._path)
            return found
        for change in found:
            if not change.live:
                log.warning("reload: %s changed; it takes effect at the next restart", change.key)
        try:
            self._root.reconfigure(effective(self._root.settings, new))
        except ConfigError as err:
            metrics.reloads.labels("invalid").inc()
            log.error("reload refused, the running configuration stays: %s", one_line(err))
            return None
        metrics.reloads.labels("applied").inc()
        live = [c.key for c in found if c.live]
        log.warning("reload of %s applied: %s", self._path, ", ".join(live) or "nothing live")
        return found
