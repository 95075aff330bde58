"""Finding and loading the ``.avsc`` files: current schemas, and superseded versions kept for reading."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any


def schema_dir() -> Path:
    """The folder holding Kiln's schemas.

    ``KILN_SCHEMA_DIR`` wins; then the copy a built wheel carries; then the repository's own
    ``schemas/`` (an editable install during development).
    """
    if env := os.environ.get("KILN_SCHEMA_DIR"):
        return Path(env)
    bundled = Path(str(resources.files("kilnbus"))) / "schemas"
    if bundled.is_dir():
        return bundled
    return Path(__file__).resolve().parents[4] / "schemas"


def load_schemas(folder: Path | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return (current schemas, previous versions). Previous versions live in ``previous/``."""
    folder = folder or schema_dir()
    current = [json.loads(p.read_text()) for p in sorted(folder.glob("*.avsc"))]
    if not current:
        raise FileNotFoundError(f"no .avsc schemas in {folder}; set KILN_SCHEMA_DIR to Kiln's schemas/ folder")
    previous = [json.loads(p.read_text()) for p in sorted((folder / "previous").glob("*.avsc"))]
    return current, previous
