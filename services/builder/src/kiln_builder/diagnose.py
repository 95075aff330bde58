"""Turning a failed build's log into a message a user can act on."""

from __future__ import annotations

import re

_PATTERNS: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"No matching distribution found for ([^\s]+)"), ("pip could not install {0}: no version of it on PyPI matches. "
     "Check the name and version in your requirements."), "pip_requirement"),
    (re.compile(r"ResolutionImpossible|Cannot install .* because these package versions have conflicting dependencies"),
     "pip could not find versions of your requirements that work together (conflicting dependencies).", "pip_conflict"),
    (re.compile(r"(?m)^kiln-conda: the conda environment cannot be solved: [^\n]{0,300}?No candidates were found for "
                r"([A-Za-z0-9_.\-]{1,100})"),
     ("environment.yml asks for the conda package {0}, which its channels do not have (or not in a version that "
      "fits). Check the name, the version and the channels."), "conda_package"),
    (re.compile(r"(?m)^kiln-conda: the conda environment cannot be solved"),
     "The conda packages in environment.yml cannot be installed together; the solver's explanation is in the log.",
     "conda_conflict"),
    (re.compile(r"E: Unable to locate package ([^\s]+)"), "apt.txt names {0}, which is not a Debian package.", "apt_package"),
    (re.compile(r"E: Package '([^']+)' has no installation candidate"), "apt.txt names {0}, which Debian cannot install.", "apt_package"),
]


def diagnose(error: str, lines: list[str], tail: int) -> tuple[str, str]:
    """(message, cause) for a build that ended with ``error`` after the log ``lines``."""
    text = "".join(lines[-400:])
    for pattern, template, cause in _PATTERNS:
        if cause.startswith("conda_") and "kiln_conda_install.py" not in error:
            continue  # a build's own output can print anything: only the installer's failure says this
        if m := pattern.search(text):
            return template.format(*m.groups()), cause
    last = "".join(lines[-tail:]) if tail else ""
    if m := re.search(r"'/bin/sh -c chmod \+x (\S*postBuild) && \./\S*postBuild' returned a non-zero code: (\d+)", error):
        return f"{m.group(1)} failed with exit code {m.group(2)}. Its last lines:\n{last}", "postbuild_failed"
    return f"The build failed: {error}\nLast lines of the log:\n{last}", "build_failed"
