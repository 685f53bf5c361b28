"""Image features: a Keras backbone cut at a feature layer (FC7 of VGG16 by default), fed by a
tf.data pipeline that reads, decodes and resizes images in parallel with the forward pass.

This module imports TensorFlow; import it only where images are actually processed.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter is not for users

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from newsdl import defaults  # noqa: E402
from newsdl.errors import UserError  # noqa: E402
from newsdl import defaults as fd  # noqa: E402
from newsdl.features.backbones import Backbone, Weights, get_backbone, keras_cache_dir  # noqa: E402
from newsdl.ingest.images import ImageRejected, check_image, read_image, safe_resolve  # noqa: E402
from newsdl.progress import Progress  # noqa: E402

log = logging.getLogger(__name__)

_TF_NOISE = re.compile(r"\{\{[^}]*\}\}\s*|\s*\[Op:\w+\].*$|\s*name:\s*$")


def select_device(gpu: str) -> str | None:
    """Set up the device for ``gpu`` in {"off", "on", "auto"}; return the mixed-precision policy
    (None: float32 on the CPU)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpu == "off":
        if gpus:  # without --gpu a run is the CPU run, whatever the node has
            _hide_gpus()
        return None
    if not gpus:
        if gpu == "on":
            raise UserError("--gpu: TensorFlow sees no GPU on this machine (is the GPU build installed, "
                            "pip install 'newsdl[gpu]'? is CUDA_VISIBLE_DEVICES set?); use --gpu auto to fall "
                            "back to the CPU")
        log.warning("--gpu auto: TensorFlow sees no GPU; running on the CPU")
        return None
    for device in gpus:
        tf.config.experimental.set_memory_growth(device, True)
    details = tf.config.experimental.get_device_details(gpus[0])
    capability = tuple(details.get("compute_capability") or (0, 0))
    # bfloat16 keeps float32's range (no loss scaling, no overflow in deep activations) where the
    # hardware has it, from Ampere (8.0) on; older GPUs get float16.
    policy = "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16"
    log.info("GPU: %s (compute capability %s), %s", details.get("device_name", gpus[0].name),
             ".".join(map(str, capability)), policy)
    return policy


def _hide_gpus() -> None:
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised its devices in this process
        log.warning("a GPU is visible and could not be hidden; TensorFlow may place work on it")


@dataclass
class Extractor:
    """A backbone cut at its feature layer, with the preprocessing its weights were trained with."""

    model: keras.Model
    backbone: Backbone
    layer: str
    size: int
    dim: int
    pooled: bool  # a spatial layer, averaged over its positions
    policy: str | None
    load: Callable = field(repr=False)  # path tensor -> preprocessed image tensor
    _infer: Callable = field(init=False, repr=False)

    def __post_init__(self):
        model = self.model
        self._infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def __call__(self, batch) -> np.ndarray:
        return self._infer(batch).numpy()


def build_extractor(backbone: Backbone, weights: Weights, *, layer: str | None = None, size: int | None = None,
                    policy: str | None = None) -> Extractor:
    # Random weights are the same in every process, so a resumed shard continues the same network.
    keras.utils.set_random_seed(defaults.SEED)
    previous = keras.mixed_precision.global_policy()
    if policy:
        keras.mixed_precision.set_global_policy(policy)
    try:
        base = _load_base(backbone, weights, size)
        size = base.input_shape[1] or size or backbone.size
        name = layer or backbone.layer
        try:
            out = base.get_layer(name).output
        except ValueError:
            tail = ", ".join(known.name for known in base.layers[-8:])
            raise UserError(f"--layer {name}: {base.name} has no such layer (its last layers: {tail})") from None
        pooled = len(out.shape) == 4
        if pooled:  # a convolutional map would be tens of thousands of numbers per image
            out = keras.layers.GlobalAveragePooling2D(name="newsdl_pool")(out)
        if len(out.shape) != 2:
            raise UserError(f"--layer {name}: output of shape {tuple(out.shape)} is not a feature vector")
        # Mixed precision computes in 16 bits; features are stored in float32.
        out = keras.layers.Activation("linear", dtype="float32", name="newsdl_features")(out)
        model = keras.Model(base.inputs, out, name=f"{base.name}_{name}")
    finally:
        keras.mixed_precision.set_global_policy(previous)
    preprocess = getattr(keras.applications, backbone.module).preprocess_input
    return Extractor(model, backbone, name, size, int(out.shape[-1]), pooled, policy,
                     load=make_loader(size, preprocess))


def _load_base(backbone: Backbone, weights: Weights, size: int | None) -> keras.Model:
    if weights.path is not None and weights.path.suffix == ".keras":
        try:
            # safe_mode refuses Lambda layers: loading a model file must not run code from it.
            base = keras.models.load_model(weights.path, compile=False, safe_mode=True)
        except Exception as exc:  # Keras raises many types for a bad archive
            raise UserError(f"--weights {weights.spec}: not a loadable Keras model ({exc})") from None
        fixed = base.input_shape[1]
        if fixed and size and fixed != size:
            raise UserError(f"--image-size {size}: the model in {weights.spec} takes {fixed}x{fixed} images")
        return base
    size = size or backbone.size
    if backbone.include_top and size != backbone.size:
        raise UserError(f"--image-size {size}: {backbone.name} with its fully connected layers takes "
                        f"{backbone.size}x{backbone.size} images only")
    if backbone.application == "small_cnn":
        base = small_cnn(size)
    else:
        kwargs = {"include_top": backbone.include_top, "weights": None, "input_shape": (size, size, 3)}
        if not backbone.include_top:
            kwargs["pooling"] = "avg"
        base = getattr(keras.applications, backbone.application)(**kwargs)
    if weights.path is not None:
        try:
            base.load_weights(str(weights.path))
        except Exception as exc:  # h5py and Keras raise many types for a mismatched file
            raise UserError(f"--weights {weights.spec}: does not fit {backbone.name} ({exc})") from None
    return base


def small_cnn(size: int) -> keras.Model:
    """Four strided 3x3 convolutions and a global average pool, 256-d. With random (He) weights
    its features still tell the sample corpus's ten scenes apart (95% with a linear model, like
    random ResNet50 or DenseNet121) at 400 images/s on 2 CPU cores, 20x their speed."""
    inputs = keras.Input((size, size, 3))
    x = inputs
    for filters in (32, 64, 128, 256):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu",
                                kernel_initializer="he_normal", name=f"conv_{filters}")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="avg_pool")(x), name="small_cnn")


def _read(path) -> bytes:
    return read_image(os.fsdecode(np.asarray(path).item()))  # bytes in tf.data, a 0-d array when eager


def make_loader(size: int, preprocess: Callable) -> Callable:
    """path -> the network's input: decode to RGB, resize the shorter side, centre crop, preprocess.

    The file is read by `read_image`, not tf.io.read_file: the bytes decoded are the bytes checked
    (regular file, opened without blocking, size limits, every GIF frame), whatever happened to the
    path since its check, and a GIF reaches the decoder cut to the one frame that is used.
    """
    resize_to = round(size / fd.CROP_FRACTION)

    def load(path):
        raw = tf.numpy_function(_read, [path], tf.string)  # a third of py_function's overhead
        raw.set_shape([])
        image = tf.io.decode_image(raw, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        hw = tf.cast(tf.shape(image)[:2], tf.float32)
        new_hw = tf.maximum(tf.cast(tf.round(hw * (resize_to / tf.reduce_min(hw))), tf.int32), size)
        image = tf.image.resize(image, new_hw, antialias=True)
        top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
        image = tf.ensure_shape(image[top:top + size, left:left + size, :], [size, size, 3])
        return preprocess(image)

    return load


def image_dataset(paths: Sequence[str], load: Callable, batch_size: int) -> tf.data.Dataset:
    """(positions, images) batches; reads and decodes run in parallel threads ahead of the model."""
    positions = np.arange(len(paths), dtype=np.int64)
    ds = tf.data.Dataset.from_tensor_slices((positions, np.asarray(paths, dtype=object).astype(str)))
    ds = ds.map(lambda i, p: (i, load(p)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # A file that fails to decode drops out here instead of ending the run: its position is then
    # missing from the output, and `featurize_files` asks the decoder again, alone, for the reason.
    ds = ds.ignore_errors()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def featurize_files(ext: Extractor, paths: Sequence[str], batch_size: int,
                    progress=None) -> Iterator[tuple[np.ndarray | None, str | None]]:
    """One ``(feature, None)`` or ``(None, reason)`` per path, in order. A bad file never stops it."""
    expected = 0
    for positions, batch in image_dataset(paths, ext.load, batch_size):
        features = ext(batch)
        if progress is not None:
            progress.update(len(features))
        for pos, feature in zip(positions.numpy(), features):
            while expected < pos:
                yield _retry(ext, paths[expected])
                expected += 1
            yield feature, None
            expected += 1
    while expected < len(paths):
        yield _retry(ext, paths[expected])
        expected += 1


def _retry(ext: Extractor, path: str) -> tuple[np.ndarray | None, str | None]:
    """Decode one image that the pipeline dropped, eagerly, to learn why."""
    try:
        read_image(path)
    except ImageRejected as exc:
        return None, f"{exc.code}: {exc}"
    try:
        image = ext.load(tf.constant(path))
    except (tf.errors.OpError, ValueError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        return None, "decode failed: " + _TF_NOISE.sub("", message).strip().splitlines()[0]
    return ext(image[None])[0], None  # a transient read error: it decodes now


def pull(name: str) -> Path:
    """Download a backbone's ImageNet weights into the Keras cache (the one command that downloads)."""
    backbone = get_backbone(name, option="models pull")
    target = keras_cache_dir() / backbone.imagenet_file
    kwargs = {"include_top": backbone.include_top, "weights": "imagenet"}
    if not backbone.include_top:
        kwargs["pooling"] = "avg"
    try:
        getattr(keras.applications, backbone.application)(**kwargs)
    except Exception as exc:  # urllib, HTTP and hash errors all mean the same to the user
        raise RuntimeError(f"could not download the ImageNet weights of {name} ({exc}); "
                           f"run this on a machine with internet access") from exc
    if not target.is_file():
        raise RuntimeError(f"Keras cached the weights of {name} somewhere other than {target}; set KERAS_HOME")
    return target


def featurize_paths(ext: Extractor, root: Path, rels: Sequence[str], batch_size: int,
                    desc: str = "images", recorded: Sequence[tuple[int | None, int | None] | None] | None = None,
                    ) -> Iterator[tuple[np.ndarray | None, str | None]]:
    """Like `featurize_files`, for paths relative to ``root`` as ingest records them. Each file's
    header is checked first (inside the root, a regular file, a known format, at most 40
    megapixels, not cut short), so a decompression bomb or a path out of the root never reaches
    the decoder. ``recorded``: per path, the (bytes, mtime_ns) ingest recorded, or None; a file
    whose size or time differs now is skipped ("image_changed"), so the features of one run
    never mix the versions of a file that ingest checked with later ones."""
    from concurrent.futures import ThreadPoolExecutor

    expected = list(recorded) if recorded is not None else [None] * len(rels)
    if len(expected) != len(rels):
        raise ValueError(f"featurize_paths: {len(rels)} paths but {len(expected)} recorded sizes and times")
    with ThreadPoolExecutor(max_workers=8) as pool:  # header reads wait on the disk, not the CPU
        checked = list(pool.map(lambda job: _check(root, *job), zip(rels, expected)))
    ok = [path for path, reason in checked if reason is None]
    with Progress(desc, total=len(ok), unit="images") as bar:
        stream = featurize_files(ext, ok, batch_size, progress=bar)
        for path, reason in checked:
            yield (None, reason) if reason is not None else next(stream)


def _check(root: Path, rel: str, recorded: tuple[int | None, int | None] | None = None,
           ) -> tuple[str | None, str | None]:
    try:
        info = check_image(root, rel)
        if recorded is not None:
            for name, was, now in zip(("size", "mtime_ns"), recorded, (info.bytes, info.mtime_ns)):
                if was is not None and was != now:
                    return None, f"image_changed: the file changed since ingest ({name} {was} -> {now}); rerun ingest"
        return str(safe_resolve(root, rel)), None
    except ImageRejected as exc:
        return None, f"{exc.code}: {exc}"
    except ValueError as exc:
        return None, f"image_path_escapes: {exc}"
    except OSError as exc:
        return None, f"image_unreadable: {exc}"


@dataclass
class ImageFeaturizer:
    """Image features for new articles' images, with the network and preprocessing featurize used."""

    extractor: Extractor
    batch_size: int

    def __call__(self, root: Path, rels: Sequence[str]) -> tuple[np.ndarray, list[str | None]]:
        """Features (n, dim) float32 and, per image, None or why it was skipped (its row is zeros)."""
        features = np.zeros((len(rels), self.extractor.dim), np.float32)
        reasons: list[str | None] = []
        for i, (feature, reason) in enumerate(featurize_paths(self.extractor, Path(root), rels, self.batch_size)):
            if feature is not None:
                features[i] = feature
            reasons.append(reason)
        return features, reasons
