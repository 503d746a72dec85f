"""Render docs/architecture.dot to docs/architecture.png with Graphviz's ``dot`` (Debian:
``apt-get install graphviz``), and record the source's SHA-256 in the PNG (a tEXt chunk
``edgemesh-source-sha256``) so that tests/test_docs.py can tell a stale image from a current
one without Graphviz.

    python3 docs/render_diagram.py
"""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
import zlib
from pathlib import Path

DOCS = Path(__file__).resolve().parent
SOURCE = DOCS / "architecture.dot"
IMAGE = DOCS / "architecture.png"
DIGEST_KEY = b"edgemesh-source-sha256"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def source_digest(path: Path = SOURCE) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of each chunk of a PNG file."""
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    found, offset = [], len(PNG_SIGNATURE)
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset:offset + 4])
        kind = png[offset + 4:offset + 8]
        found.append((kind, png[offset + 8:offset + 8 + length]))
        offset += 12 + length
    return found


def recorded_digest(png: bytes) -> str | None:
    for kind, data in chunks(png):
        if kind == b"tEXt" and data.startswith(DIGEST_KEY + b"\0"):
            return data[len(DIGEST_KEY) + 1:].decode("ascii")
    return None


def with_digest(png: bytes, digest: str) -> bytes:
    """The PNG with a tEXt chunk carrying ``digest`` right after its header chunk."""
    data = DIGEST_KEY + b"\0" + digest.encode("ascii")
    chunk = (struct.pack(">I", len(data)) + b"tEXt" + data
             + struct.pack(">I", zlib.crc32(b"tEXt" + data) & 0xFFFFFFFF))
    header_end = len(PNG_SIGNATURE) + 12 + struct.unpack(">I", png[8:12])[0]
    return png[:header_end] + chunk + png[header_end:]


def main() -> int:
    result = subprocess.run(["dot", "-Tpng", "-Gdpi=110", str(SOURCE)], capture_output=True,
                            check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stderr.decode(errors="replace"))
        return 1
    IMAGE.write_bytes(with_digest(result.stdout, source_digest()))
    print(f"wrote {IMAGE.relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
