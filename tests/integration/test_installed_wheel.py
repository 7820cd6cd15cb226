"""`kvrouter bench` from the built wheel, installed where the source tree cannot be imported."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATA_FILES = ("router/tooling/bench/wrk_post.lua", "router/tooling/bench/README.md")
NOT_SOURCE = (".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", "bench-out", "out")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a clean copy of the tree (a stale build/ would hide missing files)."""
    source = tmp_path_factory.mktemp("source") / "kvrouter"
    shutil.copytree(PROJECT_ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    out = tmp_path_factory.mktemp("wheel")
    pip(["wheel", "--no-deps", "-w", str(out), str(source)])
    return next(out.glob("kvrouter-*.whl"))


@pytest.fixture(scope="module")
def installed_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An interpreter that imports kvrouter from the wheel only: a fresh venv holding it, which
    sees this venv's dependencies through a .pth line but not its editable install of the tree
    (a directory named in a .pth file has its own .pth files ignored)."""
    env_dir = tmp_path_factory.mktemp("installed") / "venv"
    venv.create(env_dir, with_pip=False)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir)}))
    pip(["install", "--no-deps", "--target", str(site), str(wheel)])
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return env_dir / "bin" / "python"


def pip(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def outside_the_checkout(python: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_wheel_ships_the_bench_files_that_are_not_python(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in DATA_FILES if name not in names]
    assert not missing, f"{wheel.name} lacks {missing}"


def test_kvrouter_bench_runs_from_the_installed_wheel_outside_the_checkout(
    installed_python: Path, tmp_path: Path
):
    where = outside_the_checkout(
        installed_python, ["-c", "import router.tooling.bench as b; print(b.__file__)"], tmp_path
    )
    assert where.returncode == 0, where.stderr
    assert PROJECT_ROOT not in Path(where.stdout.strip()).parents, where.stdout

    args = ["-m", "router", "bench", "--quick", "--only", "sse", "--no-rust"]
    done = outside_the_checkout(installed_python, args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SSE chunks/s through 1 process" in done.stdout, done.stdout
    assert (tmp_path / "bench-out" / "bench.json").is_file()
