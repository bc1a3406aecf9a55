"""Names shared across layers, with no rba imports of their own: the bottom of the import graph.

Anything several layers must agree on and that is plain data lives here, so that no module imports a higher
layer for a name: the hash that keys caches and studies.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["config_hash"]


def config_hash(payload: Any) -> str:
    """A stable short hash of JSON-able data."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
