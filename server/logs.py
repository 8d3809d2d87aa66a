"""The server's logs: text lines on stderr, and the access log as JSON lines on stdout; set up by
`slipstream serve` and, under Ray Serve, by the ingress replica."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    """The server's log as text lines on stderr at `level`; the access log as JSON lines on stdout, one
    object per request, alone on its line (a log shipper reads it as is), while the level is info or below."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    access = logging.getLogger("slipstream.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False
    access.setLevel(logging.INFO if logging.getLevelName(level.upper()) <= logging.INFO else logging.WARNING)
