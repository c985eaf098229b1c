"""
The package as a user gets it: ``python -m build`` makes the sdist, then the wheel
from the sdist; the wheel holds every file of ``patchboard/``, passes
``twine check``, and, installed in a clean virtualenv with no repository on
``sys.path``, runs the README's quickstart (its files taken from the README as
they are written), serves the status page from the wheel's templates and runs a
breaker's Lua script on the real Redis.

About 30 s (a build, a virtualenv, a pip install): marked ``package`` (in
``make test``; leave it out of a quick run with ``-m "not stress and not package"``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import redis

import patchboard
from tests.services import require_module

pytestmark = [pytest.mark.package, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]

SETTINGS = """
# Added to what `django-admin startproject mysite` wrote, as the quickstart says.
INSTALLED_APPS += ["patchboard", "shipping.apps.ShippingConfig"]
PATCHBOARD = {{"BREAKERS": {{{breaker!r}: {{"store": {store!r}, "failure_threshold": 1}}}}}}
"""

CHECK = """\
import asyncio, json, os, sys
from importlib.metadata import version

import django

os.environ["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
django.setup()

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import AsyncClient, Client
from django.test.utils import setup_test_environment

import patchboard

setup_test_environment()  # responses list the templates they rendered
call_command("migrate", verbosity=0)
quotes = asyncio.run(AsyncClient().get("/quotes", {"cart": "1"}))

(name,) = settings.PATCHBOARD["BREAKERS"]
breaker = patchboard.get_breaker(name)
try:
    breaker.call_sync(lambda: 1 / 0)  # a failure: one run of breaker.lua on Redis
except ZeroDivisionError:
    pass

User.objects.create_user("staff", password="pw", is_staff=True)
client = Client()
client.force_login(User.objects.get(username="staff"))
page = client.get("/patchboard/")
print(json.dumps({
    "file": patchboard.__file__,
    "version": patchboard.__version__,
    "distribution_version": version("django-patchboard"),
    "quotes_status": quotes.status_code,
    "quotes": quotes.json(),
    "breaker_state": breaker.state,
    "page_status": page.status_code,
    "page_templates": sorted(t.origin.name for t in page.templates if t.origin),
    "page_names_breaker": name in page.content.decode(),
}))
"""


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def quickstart_files() -> dict[str, str]:
    """The README quickstart's Python files, by the path each block's first line names."""
    readme = (ROOT / "README.md").read_text()
    section = readme[
        readme.index("## Quickstart") : readme.index("\n## ", readme.index("## Quickstart") + 1)
    ]
    files = {}
    for block in re.findall(r"```python\n(.*?)```", section, re.DOTALL):
        if match := re.match(r"# (\w+/\w+\.py)\b", block):
            files[match[1]] = block
    return files


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel built from it, as ``python -m build`` makes them."""
    require_module("build", "pip install --group release")
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_the_wheel_holds_every_file_of_the_package(dist: dict[str, Path]) -> None:
    tree = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "patchboard").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    data = {name for name in tree if not name.endswith(".py")}
    assert {"patchboard/py.typed", "patchboard/_breaker/breaker.lua"} <= data
    assert any(name.startswith("patchboard/templates/") for name in data)
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        packaged = {name for name in wheel.namelist() if name.startswith("patchboard/")}
    assert sorted(tree - packaged) == []
    assert sorted(packaged - tree) == []


def test_twine_check_passes(dist: dict[str, Path]) -> None:
    require_module("twine", "pip install --group release")
    output = _run(sys.executable, "-m", "twine", "check", "--strict", dist["sdist"], dist["wheel"])
    assert output.count("PASSED") == 2


def test_the_quickstart_runs_from_the_installed_wheel(
    dist: dict[str, Path], tmp_path: Path, redis_url: str, breaker_name: str
) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    # The dependencies at the `test` group's pins (a constraint cannot carry extras).
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]["test"]
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("\n".join(re.sub(r"\[.*?\]", "", pin) for pin in pins) + "\n")
    _run(python, "-m", "pip", "install", "--quiet", "-c", constraints, f"{dist['wheel']}[redis]")

    project = tmp_path / "project"
    project.mkdir()
    _run(venv / "bin" / "django-admin", "startproject", "mysite", project)
    files = quickstart_files()
    assert {"shipping/signals.py", "shipping/receivers.py", "shipping/views.py"} <= set(files)
    files |= {"shipping/__init__.py": "", "check.py": CHECK}
    for name, text in files.items():
        (project / name).parent.mkdir(exist_ok=True)
        (project / name).write_text(text)
    with (project / "mysite" / "settings.py").open("a") as settings:
        settings.write(SETTINGS.format(breaker=breaker_name, store=redis_url))

    report = json.loads(_run(python, "check.py", cwd=project))
    client = redis.Redis.from_url(redis_url)
    try:
        shared_keys = list(client.scan_iter(match=f"patchboard:breaker:{{{breaker_name}}}*"))
    finally:
        client.close()

    assert Path(report["file"]).is_relative_to(venv)
    assert report["version"] == report["distribution_version"] == patchboard.__version__
    assert report["quotes_status"] == 200
    assert report["quotes"]["statuses"] == ["ok", "ok"]
    assert report["quotes"]["cheapest"] == {"carrier": "flat", "price": 9.9}
    assert report["breaker_state"] == "open"  # one failure opened it,
    assert shared_keys != []  # through breaker.lua on Redis
    assert report["page_status"] == 200
    assert report["page_names_breaker"]
    assert all(Path(origin).is_relative_to(venv) for origin in report["page_templates"])
    assert any(origin.endswith("patchboard/status.html") for origin in report["page_templates"])
