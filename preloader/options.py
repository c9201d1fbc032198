"""`spec.options` of a DataLoad: the knobs Eddy understands, and warnings for the rest.

- `concurrency`: warm requests in flight in total (default 8; each asks a worker for a batch of blocks).
- `bandwidth`: a cap on bytes per second sent to warm (`100Mi` = 100 MiB/s; default none).
- `skipIfCached`: `true` (default). A cached block is never re-fetched: its name carries the object's
  ETag, so a cached copy is never stale. `false` is accepted and reported, but the workers' warm API
  has no "re-fetch" mode, so cached blocks are still kept (see docs/preloader.md).
- `batchSize`: blocks per warm request (default 16).
- `backoffLimit`: how many times a failed attempt is retried before the DataLoad is `Failed` (default 3,
  Fluid's: its loader Job's `backoffLimit`; Fluid's DataLoad CRD has no `spec.backoffLimit`).

Unknown keys and malformed values do not fail the load: each becomes a warning, which the preloader
surfaces as a condition and an Event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from eddy.quantity import parse_quantity

KNOWN = ("concurrency", "bandwidth", "skipIfCached", "batchSize", "backoffLimit")
DEFAULT_BACKOFF_LIMIT = 3  # Fluid's dataloader chart: `backoffLimit: 3`, the loader Job's backoffLimit


@dataclass(frozen=True)
class LoadOptions:
    concurrency: int = 8
    bandwidth: int = 0  # bytes per second; 0 = no cap
    skip_if_cached: bool = True
    batch_size: int = 16
    backoff_limit: int = DEFAULT_BACKOFF_LIMIT
    warnings: tuple[str, ...] = field(default=())


def _positive_int(key: str, value: str, warnings: list[str], default: int) -> int:
    try:
        number = int(value)
        if number <= 0:
            raise ValueError
        return number
    except ValueError:
        warnings.append(f"spec.options.{key}: {value!r} is not a positive integer; using {default}")
        return default


def parse_options(raw: Mapping[str, str]) -> LoadOptions:
    warnings: list[str] = []
    defaults = LoadOptions()
    concurrency, bandwidth = defaults.concurrency, defaults.bandwidth
    skip, batch = defaults.skip_if_cached, defaults.batch_size
    backoff_limit = defaults.backoff_limit
    for key, value in raw.items():
        if key == "concurrency":
            concurrency = _positive_int(key, value, warnings, concurrency)
        elif key == "backoffLimit":
            try:
                backoff_limit = int(value)
                if backoff_limit < 0:
                    raise ValueError
            except ValueError:
                warnings.append(f"spec.options.backoffLimit: {value!r} is not a non-negative integer; "
                                f"using {DEFAULT_BACKOFF_LIMIT}")
                backoff_limit = DEFAULT_BACKOFF_LIMIT
        elif key == "batchSize":
            batch = _positive_int(key, value, warnings, batch)
        elif key == "bandwidth":
            text = value.strip()
            for suffix in ("/s", "ps"):
                text = text.removesuffix(suffix)
            try:
                bandwidth = parse_quantity(text)
            except ValueError:
                warnings.append(f"spec.options.bandwidth: {value!r} is not a quantity per second "
                                "(e.g. 100Mi); no cap")
        elif key == "skipIfCached":
            lowered = value.strip().lower()
            if lowered in ("true", "false"):
                skip = lowered == "true"
                if not skip:
                    warnings.append("spec.options.skipIfCached: false has no effect: workers keep a "
                                    "cached block (its name includes the ETag, so it is never stale)")
            else:
                warnings.append(f"spec.options.skipIfCached: {value!r} is not true or false; using true")
        else:
            warnings.append(f"spec.options.{key}: unknown option, ignored (known: {', '.join(KNOWN)})")
    return LoadOptions(concurrency, bandwidth, skip, batch, backoff_limit, tuple(warnings))
