"""Leave when the controller asks: watch the pod's annotations, as the downwardAPI volume shows them.

In classic sidecar mode (clusters without native sidecars) a Job's pod would never finish while the
FUSE sidecar keeps running. The controller sets `eddy.fluid.io/sidecar-stop: "true"` once every app
container has ended; the kubelet rewrites the downwardAPI file, and this watcher sets the same stop
event a SIGTERM would: the mount drains, unmounts and the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from eddy.names import STOP_ANNOTATION

log = logging.getLogger(__name__)


def parse_downward_annotations(text: str) -> dict[str, str]:
    """Parse the kubelet's downwardAPI `metadata.annotations` file: one `key="value"` per line.

    Values are Go-quoted strings (`strconv.Quote`); JSON string syntax reads those for every value the
    kubelet writes. A line that does not parse is skipped, not fatal: the next poll sees the next write.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, quoted = line.partition("=")
        if not sep or not key:
            continue
        try:
            value = json.loads(quoted)
        except ValueError:
            continue
        if isinstance(value, str):
            out[key.strip()] = value
    return out


def stop_requested(text: str) -> bool:
    return parse_downward_annotations(text).get(STOP_ANNOTATION) == "true"


async def watch_stop_file(path: Path, stop: asyncio.Event, interval: float = 1.0) -> None:
    """Poll `path` until it carries the stop annotation, then set `stop`. A missing file means "not yet"."""
    while not stop.is_set():
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except OSError:
            text = ""
        if stop_requested(text):
            log.info("the pod's %s annotation asks the sidecar to stop", STOP_ANNOTATION)
            stop.set()
            return
        await asyncio.sleep(interval)
