"""Checks on image files named by articles: they stay under their root and are real images.

Ingest checks each image cheaply (magic bytes, the size in its headers, a complete trailer) so
that a corpus of 200k images is checked in seconds; featurize decodes them fully and still skips,
with a reason, any image that fails to decode. Whatever is wrong with one image path or file
(a folder, a FIFO, a device, a loop of symlinks, a name too long) rejects that image, never the run.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
from concurrent.futures import ThreadPoolExecutor
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

# Blocks, segments and sub-blocks one header walk may step through. A real image under the pixel
# limit needs at most ~250k (a 60 MB GIF in 255-byte sub-blocks); without a cap a crafted file of
# tiny blocks would cost one Python loop step per two bytes.
_MAX_WALK_STEPS = 1_000_000

# Opening must never wait or take over anything: open() of a FIFO blocks until a writer comes (not
# with O_NONBLOCK), a terminal could become the controlling one, and the path was resolved before,
# so a symlink found at its end now was swapped in since.
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))

_PATH_ERRORS = {
    errno.ENOENT: ("image_missing", "missing file"),
    errno.ENOTDIR: ("image_path_invalid", "a folder in the path is a file"),
    errno.ENAMETOOLONG: ("image_path_invalid", "path or file name too long"),
    errno.ELOOP: ("image_path_invalid", "a loop of symlinks, or a symlink put in place after the path was resolved"),
    errno.EINVAL: ("image_path_invalid", "invalid path"),
    errno.EACCES: ("image_unreadable", "file is not readable"),
    errno.EPERM: ("image_unreadable", "file is not readable"),
}


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
    bytes: int | None = None  # size and modification time of the file that was checked, to
    mtime_ns: int | None = None  # notice later that it changed


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


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _not_a_file(mode: int) -> ImageRejected:
    return ImageRejected("image_not_a_file", f"path is {_kind(mode)}, not a regular file")


def _os_rejection(exc: OSError) -> ImageRejected:
    code, text = _PATH_ERRORS.get(exc.errno, ("image_unreadable", None))
    return ImageRejected(code, text or f"cannot read the file ({exc.strerror or exc})")


def open_image_file(path: str | os.PathLike):
    """``(binary file, fstat)`` of the regular file at ``path``, opened without ever waiting.

    Anything else is refused before it is opened (a FIFO would block the open, a device read
    forever), and again after, from the descriptor, in case the path was swapped in between.
    Raises ImageRejected, with a reason code for every OSError.
    """
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise _not_a_file(mode)
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise _os_rejection(exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_a_file(st.st_mode)
        return os.fdopen(fd, "rb"), st
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, OSError):
            raise _os_rejection(exc) from None
        raise


class _Walk:
    """Sequential reads of a file's blocks through a bounded buffer; skips past the buffer seek.
    Starts at ``pos`` in ``head``, the file's first bytes, which were just read from ``fh``."""

    def __init__(self, fh, head: bytes, pos: int, fmt: str, what: str):
        self.fh, self.start, self.buf, self.pos = fh, 0, head, pos
        self.truncated = f"truncated {fmt}: the file ends before {what}"
        self.fmt, self.steps = fmt, 0

    def tell(self) -> int:
        return self.start + self.pos

    def step(self) -> None:
        self.steps += 1
        if self.steps > _MAX_WALK_STEPS:
            raise ImageRejected("image_corrupt", f"{self.fmt} of over {_MAX_WALK_STEPS:,} blocks")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            rest = self.buf[self.pos:]
            self.start += self.pos
            self.buf, self.pos = rest + self.fh.read(max(n - len(rest), defaults.IMAGE_HEADER_BYTES)), 0
            if n > len(self.buf):
                raise ImageRejected("image_truncated", self.truncated)
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def byte(self) -> int:
        return self.take(1)[0]

    def skip(self, n: int) -> None:
        if self.pos + n <= len(self.buf):
            self.pos += n
        else:
            self.start += self.pos + n
            self.fh.seek(self.start)
            self.buf, self.pos = b"", 0

    def skip_sub_blocks(self) -> None:
        """Skip a chain of GIF data sub-blocks (a length byte, then that many bytes) and its 0 end."""
        while True:
            self.step()
            size = self.byte()
            if size == 0:
                return
            self.skip(size)


def _png_size(head: bytes) -> tuple[int, int]:
    if len(head) < 24 or head[12:16] != b"IHDR":
        raise ImageRejected("image_corrupt", "corrupt PNG header")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _colour_table(packed: int) -> int:
    return 3 << ((packed & 7) + 1) if packed & 0x80 else 0


def _gif_walk(fh, head: bytes, max_pixels: int, max_total: int) -> tuple[int, int, int]:
    """Walk a GIF's blocks to its trailer: (screen width, screen height, end of the first frame).

    Decoders allocate each frame at the size in its own image descriptor, which the logical
    screen does not bound, and giflib (TensorFlow's decoder) keeps every frame in memory; so each
    frame is checked, and the sum over frames too.
    """
    walk = _Walk(fh, head, 0, "GIF", "its trailer")
    screen = walk.take(13)
    width, height = struct.unpack("<HH", screen[6:10])
    _check_size("GIF", width, height, max_pixels)
    walk.skip(_colour_table(screen[10]))
    frames, total, first_end = 0, 0, 0
    while True:
        walk.step()
        block = walk.byte()
        if block == 0x3B:
            break
        if block == 0x21:  # extension: a label, then data sub-blocks
            walk.skip(1)
            walk.skip_sub_blocks()
        elif block == 0x2C:  # image descriptor: position, size, flags; colour table; LZW data
            descriptor = walk.take(9)
            frame_w, frame_h = struct.unpack("<HH", descriptor[4:8])
            frames += 1
            if frame_w == 0 or frame_h == 0:
                raise ImageRejected("image_corrupt", f"GIF frame {frames} declares an empty size {frame_w}x{frame_h}")
            if frame_w * frame_h > max_pixels:
                raise ImageRejected("image_too_large", f"GIF frame {frames} of {frame_w}x{frame_h} pixels is over "
                                    f"the limit of {max_pixels:,} (decompression bomb?)")
            total += frame_w * frame_h
            if total > max_total:
                raise ImageRejected("image_too_large", f"GIF frames 1 to {frames} hold {total:,} pixels, over the "
                                    f"limit of {max_total:,} for all frames (decompression bomb?)")
            walk.skip(_colour_table(descriptor[8]) + 1)  # + the LZW minimum code size
            walk.skip_sub_blocks()
            first_end = first_end or walk.tell()
        else:
            raise ImageRejected("image_corrupt", f"corrupt GIF: unknown block 0x{block:02x} at byte {walk.tell() - 1}")
    if not frames:
        raise ImageRejected("image_corrupt", "GIF without an image")
    return width, height, first_end


def _jpeg_size(fh, head: bytes) -> tuple[int, int]:
    """Walk JPEG markers to the first start-of-frame; its header holds the size. Segments are
    skipped by seeking, so large metadata costs neither memory nor reads."""
    walk = _Walk(fh, head, 2, "JPEG", "its frame header")
    while True:
        walk.step()
        if walk.byte() != 0xFF:
            raise ImageRejected("image_corrupt", "corrupt JPEG: bad marker")
        marker = walk.byte()
        while marker == 0xFF:  # fill bytes
            walk.step()
            marker = walk.byte()
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue
        if marker in (0xD9, 0xDA):
            raise ImageRejected("image_corrupt", "corrupt JPEG: image data before a frame header")
        seg_len = struct.unpack(">H", walk.take(2))[0]
        if seg_len < 2:
            raise ImageRejected("image_corrupt", "corrupt JPEG: bad segment length")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", walk.take(5)[1:5])
            return width, height
        walk.skip(seg_len - 2)


def _check_size(fmt: str, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageRejected("image_corrupt", f"{fmt} declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageRejected("image_too_large", f"{fmt} of {width}x{height} pixels is over the limit of "
                            f"{max_pixels:,} (decompression bomb?)")


def _complete(fh, fmt: str, size: int) -> bool:
    """A file cut short loses its trailer; check it is there (ignoring trailing padding)."""
    tail_len = min(size, 4096)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len).rstrip(b"\x00\r\n ")
    if fmt == "JPEG":
        return tail.endswith(b"\xff\xd9")
    if fmt == "PNG":
        return tail.endswith(_PNG_END)
    return True  # a GIF's walk found its trailer


def inspect_image(fh, size: int, max_pixels: int = defaults.MAX_IMAGE_PIXELS,
                  max_gif_pixels: int = defaults.MAX_GIF_TOTAL_PIXELS) -> tuple[str, int, int, int | None]:
    """(format, width, height, end of a GIF's first frame or None) of the image in binary file
    ``fh`` of ``size`` bytes, from its headers and trailer; ImageRejected if it can't be used."""
    try:
        fh.seek(0)
        head = fh.read(defaults.IMAGE_HEADER_BYTES)
        fmt = sniff_format(head)
        if fmt is None:
            raise ImageRejected("image_not_an_image", "not an image (unknown magic bytes)")
        first_end = None
        if fmt == "PNG":
            width, height = _png_size(head)
        elif fmt == "GIF":
            width, height, first_end = _gif_walk(fh, head, max_pixels, max_gif_pixels)
        else:
            width, height = _jpeg_size(fh, head)
        _check_size(fmt, width, height, max_pixels)
        if not _complete(fh, fmt, size):
            raise ImageRejected("image_truncated", f"truncated {fmt}: the file ends before its end marker")
    except struct.error:
        raise ImageRejected("image_corrupt", "corrupt image header") from None
    return fmt, width, height, first_end


def check_image(root: Path, rel: str, max_pixels: int = defaults.MAX_IMAGE_PIXELS,
                max_gif_pixels: int = defaults.MAX_GIF_TOTAL_PIXELS) -> ImageInfo:
    """Check one image cheaply: inside the root, a regular file, a known format, a sane size
    (every GIF frame, and all of them together), not truncated."""
    try:
        path = safe_resolve(root, rel)
    except ValueError as exc:
        raise ImageRejected("image_path_escapes", str(exc)) from None
    except OSError as exc:
        raise _os_rejection(exc) from None
    fh, st = open_image_file(path)
    try:
        with fh:
            fmt, width, height, _ = inspect_image(fh, st.st_size, max_pixels, max_gif_pixels)
    except OSError as exc:
        raise _os_rejection(exc) from None
    return ImageInfo(normalise(rel), fmt, width, height, st.st_size, st.st_mtime_ns)


def read_image(path: str | os.PathLike, max_pixels: int = defaults.MAX_IMAGE_PIXELS,
               max_gif_pixels: int = defaults.MAX_GIF_TOTAL_PIXELS) -> bytes:
    """The bytes a decoder should get for the image file at ``path`` (already resolved under its
    root): read once and checked as `check_image` checks a file, so a file swapped after its check
    can't reach the decoder unchecked, and a GIF cut after its first frame, so that decoders that
    read every frame (giflib, under tf.io.decode_image) decode only the one that is used."""
    fh, st = open_image_file(path)
    try:
        with fh:
            data = fh.read(st.st_size)
    except OSError as exc:
        raise _os_rejection(exc) from None
    fmt, _, _, first_end = inspect_image(io.BytesIO(data), len(data), max_pixels, max_gif_pixels)
    if fmt == "GIF":
        data = data[:first_end] + b"\x3b"
    return data


def changed_images(root: Path, table) -> list[str]:
    """Paths of ``table`` (images.parquet's rows: path, bytes, mtime_ns) whose file under ``root``
    is gone, no longer a regular file, or of another size or modification time than recorded.

    Stat only, nothing is read (100k images take well under a second on a local disk; the
    threads overlap the round trips of a network file system). Rows with neither a recorded size
    nor a time (images.parquet files written before they were recorded, where the columns are
    absent) have nothing to compare with and are never reported: callers that want such a file
    redone should look for the columns themselves.
    """
    names = set(table.column_names)
    n = table.num_rows
    paths = table.column("path").to_pylist()
    sizes = table.column("bytes").to_pylist() if "bytes" in names else [None] * n
    mtimes = table.column("mtime_ns").to_pylist() if "mtime_ns" in names else [None] * n
    rows = list(dict.fromkeys(zip(paths, sizes, mtimes)))
    base = os.fspath(root)

    def changed(row) -> bool:
        rel, size, mtime = row
        if size is None and mtime is None:
            return False
        try:
            st = os.stat(os.path.join(base, rel))
        except (OSError, ValueError, TypeError):  # ValueError: a NUL in the path
            return True
        return (not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size)
                or (mtime is not None and st.st_mtime_ns != mtime))

    def chunk(start: int) -> list[str]:
        return [row[0] for row in rows[start:start + 4096] if changed(row)]

    with ThreadPoolExecutor(8) as pool:  # os.stat releases the GIL while it waits
        found = [path for part in pool.map(chunk, range(0, len(rows), 4096)) for path in part]
    return list(dict.fromkeys(found))
