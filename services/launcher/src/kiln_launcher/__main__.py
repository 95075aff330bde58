"""Entry point: `kiln-launcher` or `python -m kiln_launcher`."""

from __future__ import annotations

import logging

from kiln_launcher.bootstrap import run
from kiln_launcher.settings import Settings
from kilnbus import run_service


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s launcher %(levelname)s %(name)s: %(message)s")
    settings = Settings()  # the environment is read here, once
    run_service(lambda stop: run(settings, stop))


if __name__ == "__main__":
    main()
