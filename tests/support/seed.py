"""Where the tests read the seed scenario's manifests from.

The seed lives beside the checkout (`../shared/seed`, read-only in CI). `EDDY_SEED_DIR` points
elsewhere; a checkout without `../shared` (a clone somewhere else) uses the copy the package ships
for `eddy demo` (`eddy_cli/seed/`), which the tests check is identical whenever both exist.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGED_SEED = ROOT / "eddy_cli" / "seed"


def _find() -> Path:
    given = os.environ.get("EDDY_SEED_DIR")
    candidates = [Path(given)] if given else []
    candidates += [ROOT.parent / "shared" / "seed", Path("/work/shared/seed")]
    for path in candidates:
        if (path / "dataset.yaml").exists():
            return path
    return PACKAGED_SEED


SEED = _find()
