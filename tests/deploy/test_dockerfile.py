"""The Dockerfile and the scripts baked into the image: hadolint passes, the image's shape is what operators
expect (pinned base, non-root, health check, exec'd launcher), and the helper scripts behave."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest


def stages(dockerfile: str) -> dict[str, list[str]]:
    """Instructions per build stage, by stage name (continuation lines joined)."""
    lines = re.sub(r"\\\n", " ", dockerfile).splitlines()
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (ln.strip() for ln in lines):
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            current = found.setdefault(line.split()[-1], [])
        current.append(line)
    return found


@pytest.fixture(scope="module")
def dockerfile(kit: Any) -> str:
    """The Dockerfile's text."""
    return (kit.repo / "Dockerfile").read_text()


def test_hadolint_passes(kit: Any) -> None:
    """No hadolint finding at any level, on the real Dockerfile."""
    kit.run(kit.tool("hadolint"), "--no-color", "Dockerfile")


def test_hadolint_is_really_checking(kit: Any, tmp_path: Path) -> None:
    """The same call fails an unpinned base image, so the test above means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\n")
    done = subprocess.run([kit.tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0 and "DL3007" in done.stdout


def test_base_image_is_pinned_and_serving_stage_is_last(dockerfile: str) -> None:
    """The default base is a patch-level Python tag; `docker build` without --target gives the service."""
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base.group(1))
    assert list(stages(dockerfile))[-1] == "serve"
    assert "train" in stages(dockerfile)
    assert "--preload" not in dockerfile


def test_serving_stage_runs_unprivileged_with_a_health_check(dockerfile: str) -> None:
    """Numeric non-root user, HEALTHCHECK on readiness, the entry script, models at the model dir."""
    serve = stages(dockerfile)["serve"]
    users = [ln.split()[1] for ln in serve if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] == "10001"
    assert any(ln.startswith("HEALTHCHECK ") and "healthcheck.py" in ln for ln in serve)
    assert 'ENTRYPOINT ["/app/entrypoint.sh"]' in serve
    assert "COPY --from=models /models /models" in serve
    assert any("TRAINSERVE_MODEL_DIR=/models" in ln for ln in serve)
    # Both doors listen on every interface and are exposed: HTTP and the gRPC service.
    assert any("TRAINSERVE_GRPC_BIND=0.0.0.0:8001" in ln for ln in serve)
    assert [ln.split()[1:] for ln in serve if ln.startswith("EXPOSE ")] == [["8000", "8001"]]
    # Only the serving dependencies: the venv comes from serve-deps, never from the training stages.
    assert [ln for ln in serve if "/opt/venv" in ln] == ["COPY --from=serve-deps /opt/venv /opt/venv"]


def test_every_copied_path_passes_the_dockerignore(kit: Any, dockerfile: str) -> None:
    """The allow-list .dockerignore lets in exactly what the COPY lines need."""
    allowed = [ln[1:].rstrip("/") for ln in (kit.repo / ".dockerignore").read_text().splitlines()
               if ln.startswith("!")]
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert any(source == a or source.startswith(a + "/") for a in allowed), source


def test_entrypoint_execs_the_launcher(kit: Any) -> None:
    """POSIX sh syntax; the launcher (runtime + front end) replaces the shell as PID 1."""
    script = kit.repo / "deploy" / "docker" / "entrypoint.sh"
    kit.run("sh", "-n", str(script))
    text = script.read_text()
    assert "exec python -m service" in text


class _Readiness(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def readiness_server() -> Iterator[ThreadingHTTPServer]:
    """A local HTTP server whose /readyz answers what the test sets."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Readiness,), {"status": 200}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_healthcheck_follows_readiness(kit: Any, readiness_server: ThreadingHTTPServer) -> None:
    """Exit 0 while /readyz answers 200 on the bound port, 1 on 503 and when nothing listens."""
    script = str(kit.repo / "deploy" / "docker" / "healthcheck.py")
    port = readiness_server.server_address[1]

    def check(bind: str) -> int:
        env = {"TRAINSERVE_BIND": bind, "PATH": "/usr/bin:/bin"}
        return subprocess.run([sys.executable, script], env=env, capture_output=True, timeout=30).returncode

    assert check(f"0.0.0.0:{port}") == 0
    readiness_server.RequestHandlerClass.status = 503
    assert check(f"0.0.0.0:{port}") == 1
    readiness_server.RequestHandlerClass.status = 200
    readiness_server.shutdown()
    readiness_server.server_close()
    assert check(f"0.0.0.0:{port}") == 1


def test_requirements_are_the_serve_extra(kit: Any) -> None:
    """The image installs the base dependencies plus the chosen extras, nothing of dev."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ (the image's Python)")
    requirements = kit.load(kit.repo / "deploy" / "docker" / "requirements.py")
    project = tomllib.loads((kit.repo / "pyproject.toml").read_text())["project"]
    got = requirements.requirements(kit.repo / "pyproject.toml", ["serve"])
    assert got == project["dependencies"] + project["optional-dependencies"]["serve"]
    assert not any(r.startswith("trainserve") for r in requirements.requirements(
        kit.repo / "pyproject.toml", ["dev"]))
    with pytest.raises(SystemExit, match="unknown extras"):
        requirements.requirements(kit.repo / "pyproject.toml", ["gpu"])


def _third_party_imports(package: Path) -> set[str]:
    """Top-level modules a package imports, less the standard library and the project's own packages."""
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"service", "training", "__future__"}


def _canonical(requirement: str) -> str:
    """The normalised distribution name a requirement string starts with."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def _with_dependencies(names: set[str]) -> set[str]:
    """Distributions and everything they require (as installed here), extras' requirements left out."""
    closed, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in closed:
            continue
        closed.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [_canonical(r) for r in requires if "extra ==" not in r]
    return closed


@pytest.mark.parametrize(("package", "extra"), [("service", "serve"), ("training", "train")])
def test_the_image_installs_every_module_the_code_imports(kit: Any, package: str, extra: str) -> None:
    """Each image installs the base dependencies plus one extra (and what they require), so every
    third-party module its package imports must come from those; a gap would only show in the image."""
    if not (kit.repo / package / "__init__.py").exists():
        pytest.skip(f"{package}/ is not in this tree")
    pytest.importorskip("tomllib", reason="Python 3.11+ (the image's Python)")
    requirements = kit.load(kit.repo / "deploy" / "docker" / "requirements.py")
    declared = {_canonical(r) for r in requirements.requirements(kit.repo / "pyproject.toml", [extra])}
    installed = _with_dependencies(declared)
    distributions = importlib.metadata.packages_distributions()
    missing = {module: distributions.get(module, ["?"]) for module in _third_party_imports(kit.repo / package)
               if not installed & {_canonical(d) for d in distributions.get(module, [])}}
    assert not missing, f"imported by {package}/ but not installed with the {extra!r} extra: {missing}"
