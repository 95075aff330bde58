"""A CRAN-like repository of R source packages made here (CRAN and its snapshots cannot be reached).

The layout R's ``install.packages`` reads: ``src/contrib/PACKAGES`` (one stanza per package, as
``tools::write_PACKAGES`` writes it) beside each ``<name>_<version>.tar.gz`` source package. It is
served with the conda channels (tests/support/condachannel.py) on the build network's mirror port.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path


def r_source_package(contrib: Path, name: str, version: str, r_code: str, exports: list[str],
                     imports: list[str] | None = None) -> Path:
    """Write ``<name>_<version>.tar.gz`` (an R source package: DESCRIPTION, NAMESPACE, R/) to ``contrib``
    and add its stanza to ``contrib/PACKAGES``."""
    depends = ", ".join(imports or [])
    description = (f"Package: {name}\nVersion: {version}\nTitle: A Package Made by Kiln's Tests\n"
                   f"Description: Stands in for a CRAN package in Kiln's tests.\nLicense: MIT + file LICENSE\n"
                   f"Authors@R: person('Kiln', 'Tests', email = 'tests@kiln.invalid', role = c('aut', 'cre'))\n"
                   f"Encoding: UTF-8\nNeedsCompilation: no\n" + (f"Imports: {depends}\n" if depends else ""))
    files = {"DESCRIPTION": description, "NAMESPACE": "".join(f"export({e})\n" for e in exports),
             "LICENSE": "YEAR: 2026\nCOPYRIGHT HOLDER: Kiln's tests\n", f"R/{name}.R": r_code}
    contrib.mkdir(parents=True, exist_ok=True)
    target = contrib / f"{name}_{version}.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}/{path}")
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    stanza = f"Package: {name}\nVersion: {version}\n" + (f"Imports: {depends}\n" if depends else "") + \
        "License: MIT + file LICENSE\nNeedsCompilation: no\n\n"
    with open(contrib / "PACKAGES", "a") as index:
        index.write(stanza)
    return target
