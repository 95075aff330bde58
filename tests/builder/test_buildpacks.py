"""repo2docker's precedence and meaning of configuration files, decided by ``plan`` (no build): which
file wins, which Python is chosen, and which files are then ignored. The real builds of each rule
are in test_build_rules.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln_builder.buildpacks import BuildpackError, CondaSettings, Plan, plan

OFFERED = ["3.11", "3.13"]


def planned(tmp_path: Path, files: dict[str, str]) -> Plan:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return plan(tmp_path, "base:1", OFFERED, {})


def installs_repository(p: Plan) -> bool:
    return "pip install --no-cache-dir ." in p.repo_dockerfile


@pytest.mark.parametrize(("spec", "python"), [
    ("python=3.13", "3.13"), ("python 3.13", "3.13"), ("python=3.13.*", "3.13"), ("python==3.13.1", "3.13"),
    ("conda-forge::python=3.13", "3.13"), ("python=3", "3.11"), ("python", "3.11"),
    # Ranges: the newest offered Python inside them (a lower bound is not a pin).
    ("python>=3.8", "3.13"), ("python>=3.9,<3.12", "3.11"), ("python >=3.10, <3.14", "3.13"),
])
def test_environment_yml_python_is_read_as_conda_reads_it(tmp_path: Path, spec: str, python: str) -> None:
    p = planned(tmp_path, {"environment.yml": f"name: anything\ndependencies:\n  - {spec}\n  - pip\n"})
    assert p.python_version == python


@pytest.mark.parametrize(("spec", "text"), [
    ("python=2.7", "asks for Python 2.7; this Binder offers Python 3.11, 3.13"),
    ("python<3", "no version offered here satisfies; this Binder offers Python 3.11, 3.13"),
    ("python>=3.1O", "the version given for python is not one Kiln understands"),
])
def test_an_environment_yml_python_that_is_not_offered_fails_naming_the_offered_ones(tmp_path: Path, spec: str,
                                                                                      text: str) -> None:
    with pytest.raises(BuildpackError, match=text):
        planned(tmp_path, {"environment.yml": f"dependencies:\n  - {spec}\n"})


def conda_config(p: Plan) -> dict[str, list[str]]:
    return json.loads(p.env_files["kiln-conda.json"])  # type: ignore[no-any-return]


@pytest.mark.parametrize("spec", ["python=3.12", "python<3.10", "python >=3.9,<3.11"])
def test_a_python_the_base_images_lack_comes_from_conda(tmp_path: Path, spec: str) -> None:
    p = planned(tmp_path, {"environment.yml": f"dependencies:\n  - {spec}\n  - pip:\n    - six\n"})
    wanted = "python " + spec.removeprefix("python").strip()
    assert conda_config(p)["specs"] == [wanted], "solved by conda, as conda reads the spec"
    assert p.summary[0] == f"Python from conda ({wanted})"
    lines = (p.env_dockerfile or "").splitlines()
    kernel = next(i for i, line in enumerate(lines) if "ipykernel install" in line)
    pip = next(i for i, line in enumerate(lines) if "pip install --no-cache-dir -r" in line)
    assert kernel < pip and "python -m pip" in lines[pip], "pip's section goes to conda's Python, after it is there"
    assert "--name python3" in lines[kernel], "conda's Python is the notebook's kernel"


def test_with_conda_packages_python_always_comes_from_conda(tmp_path: Path) -> None:
    # python=3.11 alone is the base image's Python; beside a conda package, conda's (as repo2docker).
    alone = planned(tmp_path, {"environment.yml": "dependencies:\n  - python=3.11\n"})
    assert alone.python_version == "3.11" and "kiln-conda.json" not in alone.env_files
    p = planned(tmp_path, {"environment.yml": "dependencies:\n  - python=3.11\n  - numpy\n"})
    assert conda_config(p)["specs"] == ["python =3.11", "numpy"]
    # Not listed: no Python is added; one a package needs comes as its dependency.
    p = planned(tmp_path, {"environment.yml": "dependencies:\n  - numpy\n"})
    assert conda_config(p)["specs"] == ["numpy"] and p.summary[0] == "Python 3.11 from the base image"


def test_a_python_not_offered_with_no_conda_channel_fails_naming_the_offered_ones(tmp_path: Path) -> None:
    (tmp_path / "environment.yml").write_text("dependencies:\n  - python=3.12\n")
    with pytest.raises(BuildpackError, match=r"does not offer \(it offers Python 3.11, 3.13\) and there is no conda"):
        plan(tmp_path, "base:1", OFFERED, {}, conda=CondaSettings(default_channels=()))


def test_environment_yml_ignores_requirements_runtime_and_setup_py(tmp_path: Path) -> None:
    p = planned(tmp_path, {"environment.yml": "dependencies:\n  - pip\n  - pip:\n    - six\n",
                           "requirements.txt": "toolz\n", "runtime.txt": "python-2.7\n",
                           "setup.py": "from setuptools import setup\nsetup()\n"})
    assert p.env_files["requirements.txt"] == b"six\n", "the pip section, not requirements.txt"
    assert p.python_version == "3.11", "runtime.txt is not read (python-2.7 would have failed)"
    assert not installs_repository(p)
    # Control: without environment.yml the same repository installs itself and asks runtime.txt.
    (tmp_path / "environment.yml").unlink()
    with pytest.raises(BuildpackError, match="runtime.txt asks for Python 2.7"):
        plan(tmp_path, "base:1", OFFERED, {})
    (tmp_path / "runtime.txt").unlink()
    assert installs_repository(plan(tmp_path, "base:1", OFFERED, {}))


def test_a_pipfile_beats_requirements_and_names_its_python_instead_of_runtime_txt(tmp_path: Path) -> None:
    p = planned(tmp_path, {"Pipfile": '[packages]\nsix = "*"\n\n[requires]\npython_version = "3.13"\n',
                           "requirements.txt": "toolz\n", "runtime.txt": "python-3.11\n",
                           "setup.py": "from setuptools import setup\nsetup()\n"})
    assert p.python_version == "3.13"
    assert "pipenv install" in (p.env_dockerfile or "") and "requirements.txt" not in p.env_files
    assert not installs_repository(p), "a Pipfile installs the repository only when it lists it (path = '.')"


def test_a_pipfile_lock_names_the_python_before_the_pipfile(tmp_path: Path) -> None:
    p = planned(tmp_path, {"Pipfile": '[requires]\npython_version = "3.11"\n',
                           "Pipfile.lock": '{"_meta": {"requires": {"python_version": "3.13"}}, "default": {}}'})
    assert p.python_version == "3.13"
    with pytest.raises(BuildpackError, match="Pipfile asks for Python 3.9; this Binder offers Python 3.11, 3.13"):
        planned(tmp_path / "other", {"Pipfile": '[requires]\npython_version = "3.9"\n'})


@pytest.mark.parametrize(("files", "python"), [
    ({"runtime.txt": "python-3.13\n"}, "3.13"), ({"runtime.txt": "python-3.13-2025-01-01\n"}, "3.13"),
    ({"runtime.txt": "python-3\n"}, "3.11"), ({}, "3.11"),
    ({"binder/runtime.txt": "python-3.13\n", "runtime.txt": "python-2.7\n"}, "3.13"),
])
def test_runtime_txt_picks_the_python_of_a_pip_build(tmp_path: Path, files: dict[str, str], python: str) -> None:
    assert planned(tmp_path, {"requirements.txt": "six\n", **files}).python_version == python


def test_a_binder_folder_hides_the_root_files(tmp_path: Path) -> None:
    p = planned(tmp_path, {"binder/requirements.txt": "six\n", "requirements.txt": "toolz\n",
                           "setup.py": "from setuptools import setup\nsetup()\n", "environment.yml": "dependencies: [nope]\n"})
    assert p.env_files["requirements.txt"] == b"six\n"
    assert not installs_repository(p)


def test_the_environment_starts_from_the_base_image_of_its_python(tmp_path: Path) -> None:
    images = {"3.11": "reg/base:bookworm-1", "3.13": "reg/base:trixie-2"}
    (tmp_path / "requirements.txt").write_text("six\n")
    default = plan(tmp_path, "reg/base:bookworm-1", OFFERED, {}, base_images=images)
    (tmp_path / "runtime.txt").write_text("python-3.13\n")
    newer = plan(tmp_path, "reg/base:bookworm-1", OFFERED, {}, base_images=images)
    assert (default.env_dockerfile or "").startswith("FROM reg/base:bookworm-1\n")
    assert (newer.env_dockerfile or "").startswith("FROM reg/base:trixie-2\n")
    assert default.env_key != newer.env_key, "one environment image per base image"


# -- hostile files: refused in words, in bounded time and memory -------------------------------------

def test_a_long_or_multiline_dependency_is_refused_before_any_pattern_reads_it(tmp_path: Path) -> None:
    """A pattern that backtracks on 'aaa… b\\nc' would hold the builder's event loop for minutes."""
    for entry in ['"' + "a" * 16_000 + ' b\\nc"', '"numpy\\n>=1"']:
        with pytest.raises(BuildpackError, match="longer than 256 characters or has control characters"):
            planned(tmp_path, {"environment.yml": f"dependencies:\n  - {entry}\n"})
    # Control: an ordinary entry of the same file is read.
    assert planned(tmp_path, {"environment.yml": "dependencies:\n  - python>=3.12\n"}).python_version == "3.13"


PLAN_UNDER_256_MB = """
import resource, sys, pathlib
resource.setrlimit(resource.RLIMIT_AS, (256 << 20, 256 << 20))
from kiln_builder.buildpacks import BuildpackError, plan
try:
    print(plan(pathlib.Path(sys.argv[1]), "base:1", ["3.11", "3.13"], {}).python_version)
except BuildpackError as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("files", [
    {"Pipfile": "a" + ".a" * 100_000 + " = 1\n"},  # dotted keys: tomllib keeps every prefix (gigabytes)
    {"Pipfile": "a = " + "[" * 50_000 + "]" * 50_000 + "\n"},  # nesting: recursion in a parser
    {"Pipfile": "[packages]\n", "Pipfile.lock": "[" * 200_000},
])
def test_a_crafted_pipfile_is_planned_in_bounded_memory_without_an_internal_error(tmp_path: Path,
                                                                                 files: dict[str, str]) -> None:
    import subprocess
    import sys

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run([sys.executable, "-c", PLAN_UNDER_256_MB, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == "3.11", "planned with the default Python; pipenv says what is wrong in the build"


@pytest.mark.parametrize("files", [
    {"Pipfile": '[requires]\npython_version = "\u0663.\u0661\u0661"\n'},  # Arabic-Indic digits
    {"environment.yml": "dependencies:\n  - python=\uff13.\uff11\uff11\n"},  # full-width digits
])
def test_a_python_version_is_read_in_ascii_digits_only(tmp_path: Path, files: dict[str, str]) -> None:
    """Nothing but ASCII digits is taken as a version, so no message repeats other characters."""
    try:
        p = planned(tmp_path, files)
    except BuildpackError as refused:
        assert str(refused).isascii(), str(refused)
    else:
        assert p.python_version == "3.11"


@pytest.mark.parametrize(("channels", "ok"), [
    ("[kiln-test, defaults]", True), ("[bioconda/label/dev]", True),
    ("[http://evil.example/c]", False), ("[/srv/secret]", False), ("[../x]", False), ("[file:///etc]", False),
])
def test_environment_yml_channels_are_names_never_urls_or_paths(tmp_path: Path, channels: str, ok: bool) -> None:
    files = {"environment.yml": f"channels: {channels}\ndependencies:\n  - kiln-hello\n"}
    if ok:
        config = planned(tmp_path, files).env_files["kiln-conda.json"].decode()
        assert "https://conda.anaconda.org/" in config and "defaults" not in config
    else:
        with pytest.raises(BuildpackError, match="channel names such as conda-forge"):
            planned(tmp_path, files)


PLAN_UNDER_10_CPU_SECONDS = """
import resource, sys, pathlib
resource.setrlimit(resource.RLIMIT_CPU, (10, 10))
from kiln_builder.buildpacks import BuildpackError, plan
try:
    plan(pathlib.Path(sys.argv[1]), "base:1", ["3.11", "3.13"], {})
    print("planned")
except BuildpackError as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("files", [
    {"requirements.txt": "\n" * 200_000 + "./x\n"},  # blank lines: a pattern re-scanning them all per line
    {"environment.yml": "dependencies:\n  - pip:\n" + '    - ""\n' * 20_000},
    {"Pipfile": '[requires]\npython_version = "3.11"' + " " * 200_000 + "x\n"},
    {"Dockerfile": "\n" * 200_000 + "x\n"},
])
def test_configuration_files_are_read_in_linear_time(tmp_path: Path, files: dict[str, str]) -> None:
    """Each of these took from seconds to hours before (backtracking patterns); under a CPU limit of
    10 s, far above what a linear reading of a few hundred KB needs, they are planned or refused."""
    import subprocess
    import sys

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run([sys.executable, "-c", PLAN_UNDER_10_CPU_SECONDS, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"killed at the CPU limit or crashed: {done.returncode} {done.stderr[-300:]}"
    assert done.stdout.startswith(("planned", "refused:")), done.stdout
