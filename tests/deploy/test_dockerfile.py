"""deploy/Dockerfile, parsed: stages, the final stage's base and user, the health check, and
what it copies from the build context."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from typing import Any

from dockerfile_parse import DockerfileParser

from tests.deploy.conftest import DEPLOY, REPO, listen_port

DOCKERFILE = DEPLOY / "Dockerfile"
IGNORE = DEPLOY / "Dockerfile.dockerignore"  # BuildKit reads <Dockerfile>.dockerignore first
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make ", "apt-get", "apk add", "cargo", "rustc")


def stages() -> list[list[dict[str, Any]]]:
    """The instructions of each stage, in order (comments left out)."""
    parser = DockerfileParser(str(DOCKERFILE))
    found: list[list[dict[str, Any]]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            found.append([])
        if found and instruction["instruction"] != "COMMENT":
            found[-1].append(instruction)
    return found


def final_stage() -> list[dict[str, Any]]:
    return stages()[-1]


def values(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def exec_form(value: str) -> list[str]:
    """An instruction's JSON (exec) form as a list."""
    found = json.loads(value)
    assert isinstance(found, list), f"expected the exec form [...], got {value!r}"
    return found


def test_the_image_is_built_in_stages_and_runs_from_a_slim_python_without_build_tools():
    parser = DockerfileParser(str(DOCKERFILE))
    assert len(stages()) >= 2, "expected a build stage and a final stage"
    base = parser.parent_images[-1]
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base), base
    final = final_stage()
    commands = " ".join(values(final, "RUN")).lower()
    for tool in BUILD_TOOLS:
        assert tool not in commands, f"the final stage installs or runs {tool.strip()}"
    build_names = [v.split()[-1] for v in values(stages()[0], "FROM") if " as " in v.lower()]
    assert build_names, "the build stage has no name to install from"
    assert f"from={build_names[0]}" in commands or any(
        f"--from={build_names[0]}" in v for v in values(final, "COPY")
    ), "the final stage does not take what the build stage built"


def test_the_image_runs_as_a_numeric_user_that_is_not_root():
    users = values(final_stage(), "USER")
    assert users, "the final stage sets no USER: it would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: want a numeric non-zero uid"


async def test_the_health_check_asks_healthz_on_the_port_the_router_listens_on(app_paths):
    final = final_stage()
    (healthcheck,) = values(final, "HEALTHCHECK")
    url = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/\S*?)['\"]", healthcheck)
    assert url is not None, f"HEALTHCHECK asks no local URL: {healthcheck}"
    port, path = int(url.group(1)), url.group(2)
    assert path == "/healthz" and path in app_paths
    (exposed,) = values(final, "EXPOSE")
    command = exec_form(values(final, "CMD")[-1])
    listen = command[command.index("--listen") + 1]
    assert port == int(exposed) == listen_port(listen)
    assert exec_form(values(final, "ENTRYPOINT")[-1]) == ["kvrouter"]
    assert command[0] == "serve"


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves `path` out, as Docker reads an ignore file: the last
    pattern that matches the path or one of its parents wins; `!` includes again."""
    result = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            result = not negate
    return result


def test_every_file_the_build_copies_is_in_the_build_context():
    patterns = [
        line.strip() for line in IGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    copies = [v for stage in stages() for v in values(stage, "COPY") if "--from" not in v]
    assert copies
    for copy in copies:
        *sources, _target = shlex.split(copy)
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert not ignored(source, patterns), f"COPY {source}: the ignore file leaves it out"
    assert ignored(".venv", patterns) and ignored("tests", patterns)
