"""Which child of a `--processes N` router this process is."""

from __future__ import annotations

from dataclasses import dataclass

LEADER = 0


@dataclass(frozen=True, slots=True)
class ProcessRole:
    """Child `index` of `count`; `control_fd` is its end of the channel to the supervisor;
    `metrics_dir` holds every child's metric values (prometheus-client multiprocess mode)."""

    index: int
    count: int
    control_fd: int
    metrics_dir: str

    @property
    def leader(self) -> bool:
        """The child that probes and scrapes workers and serves the operator API."""
        return self.index == LEADER

    def argument(self) -> str:
        """The hidden `serve --child` argument that hands this role to a child."""
        return f"{self.index}:{self.count}:{self.control_fd}:{self.metrics_dir}"

    @classmethod
    def parse(cls, value: str) -> ProcessRole:
        index, count, fd, metrics_dir = value.split(":", 3)
        return cls(int(index), int(count), int(fd), metrics_dir)
