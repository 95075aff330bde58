"""The runc wrapper's spec narrowing (deploy/local/build_runtime.py), on specs shaped like the engine's."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kiln_builder.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "local" / "build_runtime.py"
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
                "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
                "CAP_AUDIT_WRITE"]
KEEP = "CHOWN,DAC_OVERRIDE,FOWNER,FSETID,SETUID,SETGID,KILL"


def spec(cgroups_path: str) -> dict[str, Any]:
    caps = {name: list(DEFAULT_CAPS) for name in ("bounding", "effective", "permitted")}
    return {"process": {"capabilities": caps}, "linux": {"cgroupsPath": cgroups_path, "resources": {}}}


def run(tmp_path: Path, cgroups_path: str) -> dict[str, Any]:
    (tmp_path / "config.json").write_text(json.dumps(spec(cgroups_path), separators=(",", ":")))
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "kiln-builds", KEEP, "1024"], check=True, timeout=30)
    return dict(json.loads((tmp_path / "config.json").read_text()))


def test_a_build_step_keeps_only_the_listed_capabilities_and_gets_a_process_limit(tmp_path: Path) -> None:
    narrowed = run(tmp_path, "/kiln-builds/0123abcd")
    for name in ("bounding", "effective", "permitted"):
        assert sorted(narrowed["process"]["capabilities"][name]) == sorted("CAP_" + c for c in KEEP.split(",")), name
    assert narrowed["process"]["noNewPrivileges"] is True
    assert narrowed["linux"]["resources"]["pids"]["limit"] == 1024


@pytest.mark.parametrize("path", ["/docker/0123abcd", "/kiln-builds-other/0123abcd", "kiln-builds/0123abcd", ""])
def test_other_containers_are_left_as_the_engine_made_them(tmp_path: Path, path: str) -> None:
    assert run(tmp_path, path) == spec(path)


def test_the_wrapper_and_the_script_match_the_same_containers() -> None:
    """build-runtime greps for an absolute path; the script must agree, or a container is half-narrowed."""
    loaded = importlib.util.spec_from_file_location("build_runtime", SCRIPT)
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    assert module.is_build(spec("/kiln-builds/x"), "kiln-builds")
    assert not module.is_build(spec("kiln-builds/x"), "kiln-builds")
    assert '"cgroupsPath":"/$CGROUP/' in (ROOT / "deploy" / "local" / "docker.sh").read_text()


def test_the_builder_refuses_a_relative_build_cgroup() -> None:
    assert Settings(build_cgroup_parent="/kiln-builds").build_cgroup_parent == "/kiln-builds"
    with pytest.raises(ValidationError, match="absolute cgroup path"):
        Settings(build_cgroup_parent="kiln-builds")
