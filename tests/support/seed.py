"""Where the tests read the seed scenario's files from.

In order: `EDDY_SEED_DIR` when set (it must then hold the seed: a wrong value fails loudly instead of
quietly testing something else), the seed beside the checkout (`../shared/seed`, where the project's
machines and CI keep it), else the copy packaged in `eddy_cli/seed/` (a clone anywhere else, such as a
fresh machine). The packaged copy is the seed byte for byte: `tests/test_setup.py` checks it against
the seed's recorded digests always, and against `../shared/seed` whenever that is there.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGED_SEED = ROOT / "eddy_cli" / "seed"
BESIDE_CHECKOUT = ROOT.parent / "shared" / "seed"


def _find() -> Path:
    given = os.environ.get("EDDY_SEED_DIR")
    if given:
        path = Path(given)
        if not (path / "dataset.yaml").is_file():
            raise RuntimeError(f"EDDY_SEED_DIR={given} holds no dataset.yaml: point it at the seed's folder")
        return path
    if (BESIDE_CHECKOUT / "dataset.yaml").is_file():
        return BESIDE_CHECKOUT
    return PACKAGED_SEED


SEED = _find()
