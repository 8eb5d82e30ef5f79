"""Each image holds what the app needs (issue 12, finding 4).

The image's file set is built offline exactly as its Dockerfile copies it
(kuberay/scripts/image_files.py: the Dockerfile's own .dockerignore, every COPY,
`pip install .`, `rm -rf`), then, from that folder only, the service's own
`migrate` command runs and the app (`serve_app.app:build_app`) is imported and its
ingress started against the local PostgreSQL. The dev venv's interpreter runs with
`-S` (no site: the editable install of this checkout is not on sys.path) and
PYTHONPATH = the image folder + the venv's third-party packages; each run asserts
the repository checkout is not importable.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app import db
from tests.conftest import create_database, drop_database, pg_dsn

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "kuberay" / "scripts"))
import image_files  # noqa: E402

DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.gpu"]

# Runs inside the image folder's interpreter: proves where serve_app comes from,
# then starts the real ingress (no LLM) and reads /readyz.
PROBE = r"""
import asyncio, json, os, sys
image = os.environ["IMAGE_ROOT"]
# No sys.path entry outside the image folder holds a serve_app package (the checkout's included).
leaks = [p for p in sys.path if os.path.isdir(os.path.join(p or ".", "serve_app"))
         and not os.path.realpath(p or ".").startswith(image)]
assert not leaks, leaks
import serve_app
from serve_app.app import build_app
from serve_app import db
assert os.path.realpath(serve_app.__file__).startswith(os.environ["IMAGE_ROOT"]), serve_app.__file__
assert callable(build_app)

import httpx
from asgi_lifespan import LifespanManager
from serve_app.config import AppArgs
from serve_app.http import create_app
from serve_app.settings import Settings

async def main():
    app = create_app(AppArgs(), Settings(redis_url=None, database_sslmode="disable"))
    async with LifespanManager(app) as m:
        t = httpx.ASGITransport(app=m.app)
        async with httpx.AsyncClient(transport=t, base_url="http://image") as c:
            r = await c.get("/readyz")
    print(json.dumps({"file": serve_app.__file__, "migrations": len(db.load_migrations()),
                      "status": r.status_code, "checks": r.json().get("checks")}))

asyncio.run(main())
"""


def _third_party_paths() -> list[str]:
    """The venv's site-packages (the editable install's path hook lives in a .pth
    file there, which -S does not process)."""
    return site.getsitepackages()


def _run(argv: list[str], image_root: Path, pythonpath: Path, cwd: Path, dsn: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join([str(pythonpath), *_third_party_paths()]),
        "DATABASE_URL": dsn,
        "DATABASE_SSLMODE": "disable",
        "REPO_ROOT": str(REPO_ROOT),
        "IMAGE_ROOT": str(image_root),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    # -S: no site module, so no .pth files: the editable install is invisible.
    return subprocess.run([sys.executable, "-S", *argv], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
async def fresh_dsn():
    name = await create_database()
    yield pg_dsn(name)
    await drop_database(name)


def test_dockerignore_semantics():
    ign = image_files.DockerIgnore.parse("**\n!serve_app/**\n!pyproject.toml\n**/__pycache__\n")
    assert ign.excluded(".venv/lib/x.py") and ign.excluded("sql/schema.sql")
    assert not ign.excluded("pyproject.toml") and not ign.excluded("serve_app/migrations/0001_create_users.sql")
    assert ign.excluded("serve_app/__pycache__/db.cpython-311.pyc")
    assert image_files.DockerIgnore.parse("docs\n").excluded("docs/deploy-eks.md")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
@pytest.mark.parametrize("layout", ["site", "workdir"])
async def test_image_migrates_and_serves_from_its_own_files(tmp_path, fresh_dsn, dockerfile, layout):
    built = image_files.build(REPO_ROOT / "kuberay" / "images" / dockerfile, tmp_path / "image")
    assert (built.workdir / "serve_app" / "migrations").is_dir()
    assert not (built.workdir / "devtools").exists(), "the build-time tool must be deleted"
    assert not (built.workdir / "sql").exists()
    # "site": what `import serve_app` finds anywhere in the image (pip install .);
    # "workdir": the copy in WORKDIR, which shadows it for processes started there.
    root = built.site if layout == "site" else built.workdir
    cwd = tmp_path if layout == "site" else built.workdir
    migrate = _run(["-m", "serve_app", "migrate"], root, root, cwd, fresh_dsn)
    assert migrate.returncode == 0, migrate.stderr
    # Every migration the checkout ships, applied from the image's own copy.
    expected = [m.version for m in db.load_migrations()]
    assert f"migrations applied: {expected}" in migrate.stderr, migrate.stderr
    probe = _run(["-c", PROBE], root, root, cwd, fresh_dsn)
    assert probe.returncode == 0, probe.stderr[-3000:]
    out = json.loads(probe.stdout.strip().splitlines()[-1])
    assert out["status"] == 200 and out["checks"]["migrations"] == "applied", out


async def test_planted_missing_package_data_is_a_clear_startup_error(tmp_path, fresh_dsn):
    """The old mistake: migrations not in the image. Now `migrate` and the
    ingress fail at once with MigrationsMissing instead of retrying as if the
    database were down."""
    context = tmp_path / "context"
    context.mkdir()
    for rel in ("pyproject.toml", "README.md", "serve_config.yaml"):
        shutil.copy2(REPO_ROOT / rel, context / rel)
    for d in ("serve_app", "devtools"):
        shutil.copytree(REPO_ROOT / d, context / d, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = context / "pyproject.toml"
    text = pyproject.read_text()
    assert 'serve_app = ["migrations/*.sql"]' in text
    pyproject.write_text(text.replace('serve_app = ["migrations/*.sql"]', "serve_app = []"))
    built = image_files.build(REPO_ROOT / "kuberay" / "images" / "Dockerfile.cpu", tmp_path / "image", context)
    assert not (built.site / "serve_app" / "migrations").exists()
    migrate = _run(["-m", "serve_app", "migrate"], built.site, built.site, tmp_path, fresh_dsn)
    assert migrate.returncode != 0
    assert "MigrationsMissing" in migrate.stderr and "package data" in migrate.stderr, migrate.stderr
    probe = _run(["-c", PROBE], built.site, built.site, tmp_path, fresh_dsn)
    assert probe.returncode != 0 and "MigrationsMissing" in probe.stderr, probe.stderr[-2000:]
