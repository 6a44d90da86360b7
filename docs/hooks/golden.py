"""mkdocs hook: render the golden vectors of ``tests/data/golden-v2.json`` into the protocol page.

The page holds the marker ``<!-- golden-vectors -->``; this hook replaces it with every vector,
its decoded frames and its bytes cut into annotated fields. The annotation is computed here from
the byte layout the page documents (not from kwik's codec), so a vector that disagrees with the
documented layout fails the documentation build instead of being shown wrongly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MARKER = "<!-- golden-vectors -->"
GOLDEN = Path(__file__).resolve().parents[2] / "tests" / "data" / "golden-v2.json"

# frame type -> (name, fields); a field is (name, kind) with kind u8, u64, bool, bytes or text
# (bytes and text are preceded by their u64 length), or "ranges" (u64 count, then pairs)
FRAMES: dict[int, tuple[str, list[tuple[str, str]]]] = {
    0x01: ("Stream", [("stream_id", "u64"), ("offset", "u64"), ("fin", "bool"), ("data", "bytes")]),
    0x02: ("Ack", [("largest_acked", "u64"), ("ack_delay", "u64"), ("ranges", "ranges")]),
    0x05: ("Ping", []),
    0x06: ("AddPath", [("address", "text")]),
    0x07: ("AddPathResp", [("path_id", "u64"), ("address", "text")]),
    0x08: ("RelayData", [("relay_path_id", "u64"), ("dest_stream_id", "u64"), ("data", "bytes")]),
    0x09: ("OpenStream", [("stream_id", "u64")]),
    0x0A: ("OpenStreamResp", [("stream_id", "u64"), ("success", "bool")]),
}


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.lines: list[tuple[str, str]] = []

    def take(self, size: int, label: str) -> bytes:
        if self.pos + size > len(self.data):
            raise ValueError(f"golden vector too short for {label}")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        self.lines.append((chunk.hex(), label))
        return chunk

    def u(self, size: int, label: str) -> int:
        start = self.pos
        value = int.from_bytes(self.data[start : start + size], "big")
        self.take(size, f"{label} = {value}")
        return value


def annotate(record: bytes) -> list[tuple[str, str]]:
    """``(hex, meaning)`` for every field of one record."""
    cursor = _Cursor(record)
    outer = cursor.u(4, "outer length L1")
    inner = cursor.u(4, "inner length L2")
    if outer != inner + 4 or len(record) != outer + 4:
        raise ValueError(f"lengths disagree: L1={outer}, L2={inner}, record={len(record)} bytes")
    cursor.u(1, "header type")
    cursor.u(8, "packet number")
    count = cursor.u(8, "frame count")
    for _ in range(count):
        code = cursor.data[cursor.pos]
        if code not in FRAMES:
            raise ValueError(f"unknown frame type {code:#04x}")
        name, fields = FRAMES[code]
        cursor.take(1, f"frame type {code:#04x}: {name}")
        for field, kind in fields:
            if kind == "u64":
                cursor.u(8, f"  {field}")
            elif kind == "bool":
                cursor.u(1, f"  {field} (1 = true)")
            elif kind in ("bytes", "text"):
                size = cursor.u(8, f"  {field} length")
                if size:
                    value = cursor.data[cursor.pos : cursor.pos + size]
                    shown = value.decode() if kind == "text" else repr(value)
                    cursor.take(size, f"  {field}: {shown}")
            else:  # ack ranges
                pairs = cursor.u(8, "  range count")
                for _ in range(pairs):
                    cursor.u(8, "    smallest")
                    cursor.u(8, "    largest")
    if cursor.pos != len(record):
        raise ValueError("bytes left after the declared frames")
    return cursor.lines


def _frame_text(frame: dict[str, Any]) -> str:
    fields = []
    for key, value in frame.items():
        if key == "type":
            continue
        if key.endswith("_hex"):
            key, value = key[: -len("_hex")], bytes.fromhex(value)
        fields.append(f"{key}={value!r}")
    return f"{frame['type']}({', '.join(fields)})"


def render(golden: dict[str, Any]) -> str:
    """Markdown for every vector of ``golden``."""
    parts: list[str] = []
    for vector in golden["vectors"]:
        record = bytes.fromhex(vector["record_hex"])
        lines = annotate(record)
        width = max(len(h) for h, _ in lines)
        # long data fields: show their first 32 hex digits
        body = "\n".join(
            f"{(h if len(h) <= 40 else h[:32] + '…'):{min(width, 41)}}  {meaning}"
            for h, meaning in lines
        )
        frames = ", ".join(_frame_text(f) for f in vector["frames"])
        parts.append(
            f"### `{vector['name']}`\n\n{vector['description']} Packet number "
            f"{vector['packet_number']}, {len(record)} bytes: `{frames}`\n\n"
            f"```text\n{body}\n```\n"
        )
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """mkdocs event: fill the marker, wherever a page has it."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render(json.loads(GOLDEN.read_text())))
