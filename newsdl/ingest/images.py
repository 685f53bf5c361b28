"""Checks on image files named by articles: they stay under their root and are real images.

Ingest checks each image cheaply (magic bytes, header size, a complete trailer) so that a
corpus of 200k images is checked in seconds; featurize decodes them fully and still skips,
with a reason, any image that fails to decode.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from newsdl import defaults

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)
_PNG_END = b"IEND\xaeB`\x82"


class ImageRejected(ValueError):
    """The image can't be used; ``code`` counts it in the manifest, ``str()`` explains it."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class ImageInfo:
    path: str  # normalised POSIX path relative to the root
    format: str
    width: int
    height: int


def safe_resolve(root: Path, rel: str) -> Path:
    """Resolve ``rel`` under ``root``; raise ValueError if it would leave the root.

    Absolute paths, ``..`` components and symlinks pointing outside the root all escape it.
    """
    if not rel or "\x00" in rel:
        raise ValueError("empty or NUL-containing image path")
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        raise ValueError(f"absolute image path {rel!r} is not allowed; paths are relative to --images-root")
    if ".." in pure.parts:
        raise ValueError(f"image path {rel!r} escapes the images root")
    root_real = Path(os.path.realpath(root))
    target = Path(os.path.realpath(root_real.joinpath(*pure.parts)))
    if target != root_real and root_real not in target.parents:
        raise ValueError(f"image path {rel!r} resolves outside the images root (symlink)")
    return target


def normalise(rel: str) -> str:
    return PurePosixPath(rel.replace("\\", "/")).as_posix()


def sniff_format(head: bytes) -> str | None:
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    return None


def _png_size(head: bytes) -> tuple[int, int]:
    if len(head) < 24 or head[12:16] != b"IHDR":
        raise ImageRejected("image_corrupt", "corrupt PNG header")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _gif_size(head: bytes) -> tuple[int, int]:
    if len(head) < 10:
        raise ImageRejected("image_corrupt", "corrupt GIF header")
    width, height = struct.unpack("<HH", head[6:10])
    return width, height


def _jpeg_size(fh, head: bytes) -> tuple[int, int]:
    """Walk JPEG markers to the first start-of-frame; its header holds the size."""
    pos = 2
    data = head
    while True:
        while pos + 4 > len(data):
            more = fh.read(defaults.IMAGE_HEADER_BYTES)
            if not more:
                raise ImageRejected("image_truncated", "truncated JPEG: no frame header")
            data += more
        if data[pos] != 0xFF:
            raise ImageRejected("image_corrupt", "corrupt JPEG: bad marker")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        seg_len = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            while pos + 9 > len(data):
                more = fh.read(defaults.IMAGE_HEADER_BYTES)
                if not more:
                    raise ImageRejected("image_truncated", "truncated JPEG: frame header cut short")
                data += more
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + seg_len


def _complete(fh, fmt: str, size: int) -> bool:
    """A file cut short loses its trailer; check it is there (ignoring trailing padding)."""
    tail_len = min(size, 4096)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len).rstrip(b"\x00\r\n ")
    if fmt == "JPEG":
        return tail.endswith(b"\xff\xd9")
    if fmt == "PNG":
        return tail.endswith(_PNG_END)
    if fmt == "GIF":
        return tail.endswith(b"\x3b")
    return True


def check_image(root: Path, rel: str, max_pixels: int = defaults.MAX_IMAGE_PIXELS) -> ImageInfo:
    """Check one image cheaply: inside the root, a known format, a sane size, not truncated."""
    try:
        path = safe_resolve(root, rel)
    except ValueError as exc:
        raise ImageRejected("image_path_escapes", str(exc)) from None
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(defaults.IMAGE_HEADER_BYTES)
            fmt = sniff_format(head)
            if fmt is None:
                raise ImageRejected("image_not_an_image", "not an image (unknown magic bytes)")
            if fmt == "PNG":
                width, height = _png_size(head)
            elif fmt == "GIF":
                width, height = _gif_size(head)
            else:
                width, height = _jpeg_size(fh, head)
            if width <= 0 or height <= 0:
                raise ImageRejected("image_corrupt", f"{fmt} declares an empty size {width}x{height}")
            if width * height > max_pixels:
                raise ImageRejected("image_too_large", f"{fmt} of {width}x{height} pixels is over the limit of "
                                    f"{max_pixels:,} (decompression bomb?)")
            if not _complete(fh, fmt, size):
                raise ImageRejected("image_truncated", f"truncated {fmt}: the file ends before its end marker")
    except FileNotFoundError:
        raise ImageRejected("image_missing", "missing file") from None
    except IsADirectoryError:
        raise ImageRejected("image_missing", "path is a folder, not a file") from None
    except PermissionError:
        raise ImageRejected("image_unreadable", "file is not readable") from None
    return ImageInfo(normalise(rel), fmt, width, height)
