"""Hostile image files and paths (issue 11): GIF bombs hidden from the screen header, FIFOs and
devices, paths that make the OS raise, and files that change after ingest checked them.

The rules: image paths stay under their root, decoders get size limits, and a bad image drops
only that image with a reason (its article is kept): never a crash, a hang or exit status 1.
"""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from newsdl import defaults
from newsdl.ingest.images import ImageRejected, check_image

# ------------------------------------------------------------------------- helpers

# Clear code then end code at LZW minimum code size 2: a frame's data in four bytes.
TINY_LZW = b"\x02\x01\x2c\x00"


def crafted_gif(screen: tuple[int, int], frames: list[tuple[int, int]], lzw: bytes = TINY_LZW) -> bytes:
    """A GIF89a with a 2-colour global table, a looping extension, and per frame a graphic
    control extension and an image descriptor of the given size with ``lzw`` as its data."""
    out = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    for width, height in frames:
        out += b"\x21\xf9\x04\x00\x00\x00\x00\x00"
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + lzw
    return out + b"\x3b"


def padded_lzw(n_bytes: int, sub_block: int = 255) -> bytes:
    """LZW data of about ``n_bytes`` in sub-blocks of ``sub_block`` bytes (the walk must skip them)."""
    block = bytes([sub_block]) + b"\x00" * sub_block
    return b"\x02" + block * (n_bytes // (sub_block + 1)) + b"\x00"


def real_gif(path: Path, frames: int = 2, size=(50, 40)) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert("P")
              for _ in range(frames)]
    images[0].save(path, "GIF", save_all=True, append_images=images[1:])
    return images


def save_jpeg(path: Path, size=(32, 24), value=120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path, "JPEG")
    return path


def rejection(root: Path, rel: str, **kwargs) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        check_image(root, rel, **kwargs)
    return info.value


def finishes(fn, seconds: float = 10.0, unblock: Path | None = None):
    """Run ``fn`` in a thread; return (finished in time, its result or exception). A thread stuck
    opening the FIFO ``unblock`` is let go by opening its write end, so no test run hangs."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["result"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    stuck = thread.is_alive()
    if stuck and unblock is not None:
        fd = os.open(unblock, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(10)
    return not stuck, box.get("result")


@pytest.fixture(scope="module")
def extractor():
    from newsdl.features import images as img
    from newsdl.features.backbones import get_backbone, resolve_weights

    backbone = get_backbone("small_cnn")
    return img.build_extractor(backbone, resolve_weights("random", backbone))


# ------------------------------------------------------------------------- 3: GIF frames

def test_a_gif_frame_larger_than_its_screen_is_a_bomb(tmp_path):
    # The report's file: a 1x1 logical screen, one 12000x12000 frame, ~108 KB of LZW data.
    data = crafted_gif((1, 1), [(12000, 12000)], lzw=padded_lzw(108_000))
    assert 100_000 < len(data) < 120_000
    (tmp_path / "bomb.gif").write_bytes(data)
    exc = rejection(tmp_path, "bomb.gif")
    assert exc.code == "image_too_large" and "12000x12000" in str(exc)


def test_a_gif_of_many_frames_is_limited_by_its_pixels_summed_over_frames(tmp_path):
    (tmp_path / "frames.gif").write_bytes(crafted_gif((1500, 1500), [(1500, 1500)] * 600))
    exc = rejection(tmp_path, "frames.gif")
    assert exc.code == "image_too_large" and "all frames" in str(exc)
    assert defaults.MAX_GIF_TOTAL_PIXELS < 600 * 1500 * 1500
    # Within the budget, the same frames pass, with the screen's size.
    (tmp_path / "few.gif").write_bytes(crafted_gif((1500, 1500), [(1500, 1500)] * 3))
    info = check_image(tmp_path, "few.gif")
    assert (info.format, info.width, info.height) == ("GIF", 1500, 1500)
    assert rejection(tmp_path, "few.gif", max_gif_pixels=2 * 1500 * 1500).code == "image_too_large"


def test_gif_walk_finds_truncation_and_corruption_inside_the_blocks(tmp_path):
    good = crafted_gif((64, 64), [(64, 64)] * 2, lzw=padded_lzw(5_000))
    (tmp_path / "cut.gif").write_bytes(good[:len(good) // 2] + b"\x3b")  # a trailer byte, in the wrong place
    assert rejection(tmp_path, "cut.gif").code in ("image_truncated", "image_corrupt")
    (tmp_path / "short.gif").write_bytes(good[:len(good) // 2])
    assert rejection(tmp_path, "short.gif").code == "image_truncated"
    (tmp_path / "empty_frame.gif").write_bytes(crafted_gif((64, 64), [(0, 64)]))
    assert rejection(tmp_path, "empty_frame.gif").code == "image_corrupt"
    (tmp_path / "no_frame.gif").write_bytes(crafted_gif((64, 64), []))
    assert rejection(tmp_path, "no_frame.gif").code == "image_corrupt"
    real_gif(tmp_path / "real.gif")
    assert check_image(tmp_path, "real.gif").format == "GIF"


def test_header_walks_are_bounded_in_memory_and_steps(tmp_path):
    # 20 MB of sub-blocks under one 4000x4000 frame: walked with a bounded buffer, not read whole.
    (tmp_path / "big.gif").write_bytes(crafted_gif((4000, 4000), [(4000, 4000)], lzw=padded_lzw(20 << 20)))
    # A JPEG whose frame header comes after 3 MB of metadata segments.
    jpeg = save_jpeg(tmp_path / "x.jpg").read_bytes()
    app = b"\xff\xe3" + struct.pack(">H", 65535) + b"\x00" * 65533
    (tmp_path / "meta.jpg").write_bytes(jpeg[:2] + app * 48 + jpeg[2:])
    for name, size in (("big.gif", (4000, 4000)), ("meta.jpg", (32, 24))):
        tracemalloc.start()
        try:
            info = check_image(tmp_path, name)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert (info.width, info.height) == size
        assert peak < 1 << 20, (name, peak)
    # Two-byte sub-blocks: a loop step per two bytes; the walk gives up instead of crawling.
    (tmp_path / "crawl.gif").write_bytes(crafted_gif((1, 1), [(1, 1)], lzw=padded_lzw(4 << 20, sub_block=1)))
    start = time.monotonic()
    assert rejection(tmp_path, "crawl.gif").code == "image_corrupt"
    assert time.monotonic() - start < 10


def test_featurize_decodes_only_the_first_gif_frame(tmp_path):
    import tensorflow as tf

    from newsdl.features import images as img
    from newsdl.ingest.images import read_image

    frames = real_gif(tmp_path / "anim.gif", frames=3)
    data = read_image(tmp_path / "anim.gif")
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.n_frames == 1
        assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(frames[0].convert("RGB")))
    got = img.make_loader(40, lambda x: x)(tf.constant(str(tmp_path / "anim.gif"))).numpy()
    assert got.shape == (40, 40, 3)


def test_the_decoder_gets_checked_bytes_even_without_featurizes_header_check(tmp_path, extractor):
    """A file swapped after featurize checked its header (here: never checked) still can't
    reach the decoder as a bomb: the loader checks the very bytes it decodes."""
    from newsdl.features import images as img

    Image.new("1", (8000, 6000)).save(tmp_path / "bomb.png")  # 48 megapixels in a few kB
    (tmp_path / "frames.gif").write_bytes(crafted_gif((1500, 1500), [(1500, 1500)] * 600))
    save_jpeg(tmp_path / "ok.jpg")
    paths = [str(tmp_path / n) for n in ("bomb.png", "frames.gif", "ok.jpg")]
    results = list(img.featurize_files(extractor, paths, 2))
    assert results[0][0] is None and results[0][1].startswith("image_too_large")
    assert results[1][0] is None and results[1][1].startswith("image_too_large")
    assert results[2][1] is None and results[2][0].shape == (extractor.dim,)


# ------------------------------------------------------------------------- 4: FIFOs and devices

def test_a_fifo_is_refused_before_it_is_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    done, result = finishes(lambda: check_image(tmp_path, "pipe.jpg"), unblock=tmp_path / "pipe.jpg")
    assert done, "check_image blocked opening a FIFO"
    assert isinstance(result, ImageRejected) and result.code == "image_not_a_file", result
    assert "FIFO" in str(result)


def test_a_fifo_swapped_in_after_the_stat_does_not_block(tmp_path, monkeypatch):
    from newsdl.ingest import images

    save_jpeg(tmp_path / "real.jpg")
    regular = os.stat(tmp_path / "real.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    real_stat = os.stat
    # The path was a regular file when it was looked at, and a FIFO when it is opened.
    monkeypatch.setattr(images.os, "stat", lambda p, *a, **k: regular if str(p).endswith("pipe.jpg")
                        else real_stat(p, *a, **k))
    monkeypatch.setattr(Path, "stat", lambda self, *a, **k: regular if self.name == "pipe.jpg"
                        else real_stat(self, *a, **k))
    done, result = finishes(lambda: check_image(tmp_path, "pipe.jpg"), unblock=tmp_path / "pipe.jpg")
    assert done, "check_image blocked opening a FIFO"
    assert isinstance(result, ImageRejected) and result.code == "image_not_a_file", result


def test_devices_and_folders_are_not_image_files(tmp_path):
    assert rejection(Path("/dev"), "zero").code == "image_not_a_file"
    assert rejection(Path("/dev"), "null").code == "image_not_a_file"
    (tmp_path / "folder.jpg").mkdir()
    assert rejection(tmp_path, "folder.jpg").code == "image_not_a_file"


def test_featurize_refuses_a_fifo_without_blocking(tmp_path):
    import tensorflow as tf

    from newsdl.features import images as img

    os.mkfifo(tmp_path / "pipe.jpg")
    load = img.make_loader(32, lambda x: x)
    done, result = finishes(lambda: load(tf.constant(str(tmp_path / "pipe.jpg"))), unblock=tmp_path / "pipe.jpg")
    assert done, "featurize's loader blocked opening a FIFO"
    # Eager calls re-raise the reader's exception; inside tf.data it is an OpError that drops the image.
    assert isinstance(result, (ImageRejected, tf.errors.OpError)) and "regular file" in str(result), result
    reasons = [reason for _, reason in img.featurize_paths(_StubExtractor(img), tmp_path, ["pipe.jpg"], 2)]
    assert reasons[0].startswith("image_not_a_file")


class _StubExtractor:
    """Stands for an Extractor where no image reaches the network."""

    def __init__(self, img):
        self.load = img.make_loader(32, lambda x: x)
        self.dim = 4

    def __call__(self, batch):
        return np.zeros((len(batch), self.dim), np.float32)


# ------------------------------------------------------------------------- 7: path errors

def _hostile_paths(root: Path) -> dict[str, str]:
    """Relative paths that make the OS raise, each with the reason code it must get."""
    save_jpeg(root / "ok.jpg")
    (root / "loop_a.jpg").symlink_to(root / "loop_b.jpg")
    (root / "loop_b.jpg").symlink_to(root / "loop_a.jpg")
    (root / "self.jpg").symlink_to("self.jpg")
    return {
        "ok.jpg/x.jpg": "image_path_invalid",  # through a file: NotADirectoryError
        "n" * 300 + ".jpg": "image_path_invalid",  # ENAMETOOLONG
        "/".join(["deep"] * 1000) + "/x.jpg": "image_path_invalid",  # over 4,096 characters
        "loop_a.jpg": "image_path_invalid",  # ELOOP
        "self.jpg": "image_path_invalid",
        "missing/x.jpg": "image_missing",
    }


def test_path_errors_reject_the_image_with_a_reason(tmp_path):
    for rel, code in _hostile_paths(tmp_path).items():
        exc = rejection(tmp_path, rel)
        assert exc.code == code, (rel[:40], exc.code, str(exc))


def test_ingest_keeps_the_article_of_each_bad_image_path(tmp_path):
    import pyarrow.parquet as pq

    from conftest import run_cli

    root = tmp_path / "root"
    root.mkdir()
    hostile = _hostile_paths(root)
    os.mkfifo(root / "pipe.jpg")
    hostile["pipe.jpg"] = "image_not_a_file"
    records = [{"id": f"a{k}", "text": "words", "images": [{"path": rel}, {"path": "ok.jpg"}]}
               for k, rel in enumerate(hostile)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ws = tmp_path / "ws"
    result = run_cli("ingest", tmp_path / "in.jsonl", "--images-root", root, "-w", ws, timeout=120)
    assert result.returncode == 0, result.stderr
    articles = pq.read_table(ws / "ingest" / "articles.parquet")
    assert articles.num_rows == len(hostile)
    assert [len(images) for images in articles.column("images").to_pylist()] == [1] * len(hostile)
    rejected = [json.loads(line) for line in (ws / "ingest" / "rejected.jsonl").read_text().splitlines()]
    assert {r["image"]: r["code"] for r in rejected} == hostile
    images = pq.read_table(ws / "ingest" / "images.parquet")
    stat = os.stat(root / "ok.jpg")
    assert set(images.column("bytes").to_pylist()) == {stat.st_size}
    assert set(images.column("mtime_ns").to_pylist()) == {stat.st_mtime_ns}


# ------------------------------------------------------------------------- 16: changed files

def test_check_records_the_size_and_time_of_the_file_it_read(tmp_path):
    save_jpeg(tmp_path / "a.jpg")
    stat = os.stat(tmp_path / "a.jpg")
    info = check_image(tmp_path, "a.jpg")
    assert (info.bytes, info.mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def test_changed_images_finds_changed_deleted_and_replaced_files(tmp_path):
    from newsdl.ingest.images import changed_images
    from newsdl.ingest.schema import IMAGES

    names = ["same.jpg", "resized.jpg", "touched.jpg", "deleted.jpg", "now_a_folder.jpg", "sub/same.jpg"]
    infos = [check_image(tmp_path, str(save_jpeg(tmp_path / n).relative_to(tmp_path))) for n in names]
    rows = [{"image_id": f"a#{k}", "article_id": "a", "path": i.path, "split": "train", "bytes": i.bytes,
             "mtime_ns": i.mtime_ns} for k, i in enumerate(infos)]
    rows.append(dict(rows[0], image_id="b#0", article_id="b"))  # one file, two articles
    table = pa.Table.from_pylist(rows, schema=IMAGES)
    assert changed_images(tmp_path, table) == []

    save_jpeg(tmp_path / "resized.jpg", size=(64, 48))
    os.utime(tmp_path / "resized.jpg", ns=(infos[1].mtime_ns, infos[1].mtime_ns))  # same time, other size
    os.utime(tmp_path / "touched.jpg", ns=(infos[2].mtime_ns + 10**9, infos[2].mtime_ns + 10**9))
    (tmp_path / "deleted.jpg").unlink()
    (tmp_path / "now_a_folder.jpg").unlink()
    (tmp_path / "now_a_folder.jpg").mkdir()
    assert changed_images(tmp_path, table) == ["resized.jpg", "touched.jpg", "deleted.jpg", "now_a_folder.jpg"]

    # images.parquet written before size and time were recorded: nothing to compare, nothing reported.
    old = table.drop_columns(["bytes", "mtime_ns"])
    assert changed_images(tmp_path, old) == []
    assert changed_images(tmp_path, table.slice(0, 0)) == []


def test_changed_images_is_stat_only_and_fast(tmp_path):
    from newsdl.ingest.images import changed_images

    save_jpeg(tmp_path / "x.jpg")
    stat = os.stat(tmp_path / "x.jpg")
    n = 20_000
    for k in range(n):
        os.link(tmp_path / "x.jpg", tmp_path / f"{k}.jpg")  # hard links: the same size and time
    table = pa.table({"path": [f"{k}.jpg" for k in range(n)], "bytes": [stat.st_size] * n,
                      "mtime_ns": [stat.st_mtime_ns] * n})
    start = time.monotonic()
    assert changed_images(tmp_path, table) == []
    assert time.monotonic() - start < 2.0  # ~0.1 s here; 100k images in about a second on 2 cores


def test_featurize_skips_an_image_changed_since_ingest(tmp_path):
    from newsdl.features import images as img

    infos = [check_image(tmp_path, save_jpeg(tmp_path / n).name) for n in ("kept.jpg", "changed.jpg", "old.jpg")]
    save_jpeg(tmp_path / "changed.jpg", size=(64, 48), value=30)
    recorded = [(infos[0].bytes, infos[0].mtime_ns), (infos[1].bytes, infos[1].mtime_ns), None]
    out = list(img.featurize_paths(_StubExtractor(img), tmp_path, ["kept.jpg", "changed.jpg", "old.jpg"], 2,
                                   recorded=recorded))
    assert out[0][1] is None and out[2][1] is None  # None: recorded by an older ingest, not compared
    assert out[1][0] is None and out[1][1].startswith("image_changed")
