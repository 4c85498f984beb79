"""A zip whose entries are stored (not compressed) and page-aligned, so an app can memory-map a model
straight out of it (an APK asset opened by file descriptor, seeking to the entry's offset), as zipalign -p
does for native libraries. Files are streamed in; nothing is held in memory.
"""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path

ALIGNMENT = 4096  # a page: enough for mmap, and a multiple of GGUF's 32-byte data alignment
_ZIPALIGN_EXTRA = 0xD935  # Android's zipalign extra field: u16 alignment, then padding


def _aligned_info(name: str, offset: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    fixed = 30 + len(name.encode()) + 20  # local header + name + the zip64 extra zipfile writes for large files
    base = offset + fixed + 6  # + our extra field's own header and alignment word
    info.extra = struct.pack("<HHH", _ZIPALIGN_EXTRA, 2 + (-base % ALIGNMENT), ALIGNMENT) + bytes(-base % ALIGNMENT)
    return info


def write_aligned_zip(zip_path: Path, files: list[tuple[Path, str]]) -> dict[str, int]:
    """Write `files` ((source, name in archive)) stored and aligned; returns each entry's data offset."""
    offsets = {}
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for src, name in files:
            info = _aligned_info(name, z.fp.tell())
            with open(src, "rb") as fin, z.open(info, "w", force_zip64=True) as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        for info in z.infolist():
            offsets[info.filename] = data_offset(zip_path, info)
    return offsets


def data_offset(zip_path: Path, info: zipfile.ZipInfo) -> int:
    """Where an entry's bytes start in the archive (after its local header, name and extra field)."""
    with open(zip_path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
        name_len, extra_len = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + name_len + extra_len


def check_archive(zip_path: Path) -> list[str]:
    """Problems that would stop an app from mapping the archive's models in place."""
    problems = []
    with zipfile.ZipFile(zip_path) as z:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                problems.append(f"{info.filename} is compressed (must be stored)")
            elif info.filename.endswith((".gguf", ".onnx")) and data_offset(zip_path, info) % ALIGNMENT:
                problems.append(f"{info.filename} starts at {data_offset(zip_path, info)}, not a multiple of {ALIGNMENT}")
    return problems
