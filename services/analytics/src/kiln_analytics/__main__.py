"""Entry point: `kiln-analytics` or `python -m kiln_analytics`."""

from __future__ import annotations

import logging

from kiln_analytics import bootstrap


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s analytics %(levelname)s %(name)s: %(message)s")
    for chatty in ("faust", "mode", "aiokafka"):  # their INFO is a line per partition per rebalance
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # "producer buffer full" is faust waiting for the changelog to drain during a rebuild: expected
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)
    bootstrap.main()


if __name__ == "__main__":
    main()
