"""What a fresh clone's ``pulumi up`` installs, and the pins the program relies on.

Pulumi's Python toolchain (``toolchain: pip``) creates the virtualenv that Pulumi.yaml names and
installs ``requirements.txt`` into it. That must bring every distribution the program imports,
as a runtime dependency of this project (not a test extra), and nothing of the CLI (click).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LOCAL = {"poolkit", "components", "apps", "tests"}


def pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def runtime_requirements() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def module_file(name: str) -> Path | None:
    """The source file of a project module (``poolkit.config`` -> poolkit/config.py)."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def program_imports() -> tuple[set[str], set[str]]:
    """(project modules, third-party top-level packages) ``__main__.py`` loads, transitively."""
    seen: set[str] = set()
    third_party: set[str] = set()
    queue = [ROOT / "__main__.py"]
    while queue:
        tree = ast.parse(queue.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                top = name.split(".")[0]
                if top not in LOCAL:
                    if top not in sys.stdlib_module_names and top != "__future__":
                        third_party.add(top)
                    continue
                path = module_file(name)
                if path is not None and name not in seen:
                    seen.add(name)
                    queue.append(path)
                    package = name.rsplit(".", 1)[0]
                    init = module_file(package)
                    if init is not None and package not in seen:
                        seen.add(package)
                        queue.append(init)
    return seen, third_party


def test_pulumi_creates_a_venv_and_installs_requirements_txt() -> None:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    options = project["runtime"]["options"]
    assert (project["runtime"]["name"], options["toolchain"], options["virtualenv"]) == (
        "python", "pip", ".venv")
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == ["-e ."], "requirements.txt installs this project with its dependencies"


def test_every_distribution_the_program_imports_is_a_runtime_dependency() -> None:
    _, third_party = program_imports()
    assert {"pulumi", "pulumi_docker", "pulumi_random", "jinja2", "yaml"} <= third_party
    distributions = importlib.metadata.packages_distributions()
    needed = {canonicalize_name(dist) for top in third_party for dist in distributions[top]}
    # psycopg-binary is psycopg's optional C part; the program does not import psycopg.
    missing = needed - set(runtime_requirements())
    assert not missing, f"imported by the program but not in [project.dependencies]: {missing}"


def test_the_program_does_not_need_the_cli() -> None:
    modules, third_party = program_imports()
    assert "click" not in third_party, sorted(modules)
    assert "poolkit.cli" not in modules and "poolkit.pulumi_target" not in modules


def test_pins_admit_only_what_the_code_uses() -> None:
    """Upload ``owner``/``group`` exist from pulumi-docker 5.2.0; 6 may change the API."""
    docker = runtime_requirements()["pulumi-docker"]
    assert "5.1.0" not in docker.specifier and "5.2.0" in docker.specifier
    assert "6.0.0" not in docker.specifier


def test_lower_bounds_file_matches_pyproject() -> None:
    pinned = {}
    for line in (ROOT / "constraints" / "lower-bounds.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pinned[name.strip()] = version.strip()
    requirements = runtime_requirements()
    for name, version in pinned.items():
        lowest = [s.version for s in requirements[name].specifier if s.operator == ">="]
        assert lowest and re.sub(r"(\.0)+$", "", lowest[0]) == re.sub(r"(\.0)+$", "", version), (
            name, lowest, version)
    assert set(pinned) == {"pulumi", "pulumi-docker", "pulumi-kubernetes", "pulumi-random"}


def test_pulumi_lower_bound_is_what_pulumi_docker_itself_needs() -> None:
    """pulumi-docker 5.2.0 requires the SDK from 3.231: a lower pin would only pretend."""
    needs = [Requirement(r) for r in importlib.metadata.requires("pulumi_docker") or []]
    (sdk,) = [r for r in needs if canonicalize_name(r.name) == "pulumi"]
    ours = runtime_requirements()["pulumi"].specifier
    (theirs,) = [Version(s.version) for s in sdk.specifier if s.operator == ">="]
    (lowest,) = [Version(s.version) for s in ours if s.operator == ">="]
    assert lowest >= theirs, f"pyproject admits pulumi {ours}; pulumi-docker needs {sdk}"
