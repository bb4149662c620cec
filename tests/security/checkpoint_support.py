"""What the checkpoint security tests share: `sparsecore server` processes on loopback, and
forging of checkpoint files (a manifest rewritten with consistent sizes and checksums, as an
attacker who can write the files would)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from test_ps import _env as child_env  # noqa: F401  (tests/ is on sys.path; re-exported)
from test_ps import stop  # noqa: F401  (re-exported for the checkpoint tests)

HEADER = struct.Struct("<8sIIIIQIIQ16x")  # the 64-byte row file header


def start_server(*args, check: bool = True) -> tuple[subprocess.Popen, str, str]:
    """A `sparsecore server` process on a free loopback port: (process, "host:port", its first
    line). With check=False a server that exits at start is returned as is (its line is '')."""
    # stderr goes to a file, not a pipe that a chatty server could fill and block on.
    err = tempfile.TemporaryFile("w+")
    p = subprocess.Popen([sys.executable, "-c", "import sys; from sparsecore.server import main; sys.exit(main(sys.argv[1:]))",
                          *map(str, args)], stdout=subprocess.PIPE, stderr=err, env=child_env(), text=True)
    p.stderr_file = err
    line = p.stdout.readline()
    if check and not line.startswith("listening on"):
        p.wait(30)
        err.seek(0)
        raise AssertionError(f"server did not start: {line!r}\n{err.read()[-3000:]}")
    return p, (line.split()[2] if line.startswith("listening on") else ""), line


_M = (1 << 64) - 1


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _fmix64(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M
    return k ^ (k >> 33)


def checksum64(data: bytes) -> int:
    """The row files' checksum (a reference of csrc/sparsecore/core/checksum.cpp), so that
    forged files pass it as an attacker's would: it detects bit rot, not forgery."""
    prime = 0x9FB21C651E98DF25
    lanes = [0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89]
    full = len(data) // 32 * 32
    for off in range(0, full, 32):
        for lane in range(4):
            w = int.from_bytes(data[off + 8 * lane: off + 8 * lane + 8], "little")
            lanes[lane] = (_rotl(lanes[lane] ^ ((w * prime) & _M), 29) * 0xC2B2AE3D27D4EB4F) & _M
    h = (len(data) * prime) & _M
    for lane in range(4):
        h = _fmix64(h ^ _rotl(lanes[lane], 7 * lane + 1))
    for i, byte in enumerate(data[full:]):
        h = _fmix64(h ^ (byte << (8 * (i % 8))) ^ i)
    return h


def forge(path: Path, index: int, data: bytes, **fields) -> None:
    """Replaces row file `index` of the checkpoint at `path` with `data` and rewrites its
    manifest entry to match (bytes, checksum, and any `fields` such as rows)."""
    m = manifest(path)
    entries = [f for t in m["tables"] for f in t["files"]]
    entry = sorted(entries, key=lambda f: f["path"])[index]
    (path / entry["path"]).write_bytes(data)
    entry["bytes"] = len(data)
    entry["checksum"] = f"{checksum64(data):016x}"
    entry.update(fields)
    for t in m["tables"]:
        t["rows"] = sum(f["rows"] for f in t["files"])
    write_manifest(path, m)


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def write_manifest(path: Path, m: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(m))


def row_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix == ".rows")
