"""The local hub's configuration (deploy/jupyterhub/jupyterhub_config.py) as JupyterHub loads it,
with the hub's own installation (make up installs it), under the settings an operator gives."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HUB_PYTHON = ROOT / ".state" / "hub" / "venv" / "bin" / "python"
LOAD = """
import json
from traitlets.config.loader import PyFileConfigLoader
c = PyFileConfigLoader("jupyterhub_config.py", path="deploy/jupyterhub").load_config()
print(json.dumps(list(c.Spawner.args) if "args" in c.Spawner else None))
"""

pytestmark = [pytest.mark.hub,
              pytest.mark.skipif(not HUB_PYTHON.exists(), reason="needs the hub's installation (make up makes it)")]


def spawner_args(tmp_path: Path, **settings: str) -> list[str] | None:
    (tmp_path / "hub").mkdir(exist_ok=True)
    (tmp_path / "hub" / "launcher-token").write_text("t")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")} | {"KILN_STATE": str(tmp_path), **settings}
    done = subprocess.run([str(HUB_PYTHON), "-c", LOAD], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    args: list[str] | None = json.loads(done.stdout)
    return args


def test_servers_allow_the_gateways_cors_origin_unless_told_otherwise(tmp_path: Path) -> None:
    """As BinderHub: with CORS configured, servers accept that origin too (Thebe, Jupyter Book)."""
    assert spawner_args(tmp_path) is None
    assert spawner_args(tmp_path, KILN_CORS_ALLOW_ORIGIN="https://book.example") == [
        "--ServerApp.allow_origin=https://book.example"]
    assert spawner_args(tmp_path, KILN_CORS_ALLOW_ORIGIN="https://book.example", KILN_SERVER_ALLOW_ORIGIN="*") == [
        "--ServerApp.allow_origin=*"]
    assert spawner_args(tmp_path, KILN_CORS_ALLOW_ORIGIN="https://book.example", KILN_SERVER_ALLOW_ORIGIN="") is None
