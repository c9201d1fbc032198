"""docs/operations.md quotes the messages users see: each must be text the code (or a manifest) writes.

A troubleshooting entry names its message as "Message ...: `text`" or in a list under "Messages:";
every such text must stand in a source file of the project (a part, a manifest, or the sandbox's
stand-in for kube-apiserver and the kubelet), so the guide cannot drift from what is printed.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "operations.md"
SOURCES = ("eddy", "eddy_cli", "webhook", "sidecar", "worker", "preloader", "controller", "sandbox",
           "manifests")


def quoted_messages(text: str) -> list[str]:
    section = text.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    messages: list[str] = []
    in_list = False
    for line in section.splitlines():
        if (found := re.search(r"Message(?: \([^)`]*\))?:\s*`([^`]+)`", line)) is not None:
            messages.append(found.group(1))
        if line.rstrip().endswith("Messages:"):
            in_list = True
            continue
        if in_list:
            if (item := re.match(r"\s*- `([^`]+)`", line)) is not None:
                messages.append(item.group(1))
            elif not line.startswith(("  ", "- ")):
                in_list = False
    return messages


def source_text() -> str:
    parts = []
    for top in SOURCES:
        for path in sorted((REPO / top).rglob("*")):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                parts.append(path.read_text(errors="replace"))
    return "\n".join(parts)


def test_every_quoted_message_is_written_by_the_code() -> None:
    messages = quoted_messages(DOC.read_text())
    assert len(messages) >= 6, messages  # the guide quotes one per symptom at least
    code = source_text()
    missing = [m for m in messages if m not in code]
    assert not missing, f"docs/operations.md quotes messages no source writes: {missing}"
