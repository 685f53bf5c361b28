"""Which image networks featurize supports, where each is cut, and which weights it runs with.

Plain data, no TensorFlow: a wrong `--backbone`, `--layer` default or missing weights file is
reported before the 4-second TensorFlow import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from newsdl import defaults
from newsdl.errors import UserError
from newsdl.workspace import sha256_file


@dataclass(frozen=True)
class Backbone:
    name: str
    application: str  # constructor in keras.applications
    module: str  # keras.applications.<module>.preprocess_input
    layer: str  # default feature layer
    include_top: bool  # VGG's FC7 lives in the top; the others are cut at their global pool
    imagenet_file: str | None  # the file keras.applications caches in $KERAS_HOME/models
    size: int = 224


BACKBONES = {b.name: b for b in (
    Backbone("vgg16", "VGG16", "vgg16", "fc2", True, "vgg16_weights_tf_dim_ordering_tf_kernels.h5"),
    Backbone("vgg19", "VGG19", "vgg19", "fc2", True, "vgg19_weights_tf_dim_ordering_tf_kernels.h5"),
    Backbone("resnet50", "ResNet50", "resnet50", "avg_pool", False,
             "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    # 576-d, ~30x faster than VGG16 on a CPU, but only with ImageNet weights: with random weights
    # its activations vanish (features ~1e-11), like every network with squeeze-excite blocks.
    Backbone("mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3", "avg_pool", False,
             "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    # Four strided convolutions (images.small_cnn), for tests and the demo on a CPU: no pretrained
    # weights, but even random ones keep colour and texture statistics. Inputs scaled to [-1, 1].
    Backbone("small_cnn", "small_cnn", "mobilenet_v2", "avg_pool", False, None, size=96),
)}


@dataclass(frozen=True)
class Weights:
    spec: str  # "imagenet", "random" or the path as given
    path: Path | None  # the file to load; None for random
    sha256: str | None

    def record(self) -> dict:
        if self.path is None:  # random weights are drawn from the suite's seed: the same in every run
            return {"spec": self.spec, "seed": defaults.SEED}
        return {"spec": self.spec, "file": self.path.name, "sha256": self.sha256}


def preprocessing(backbone: Backbone, size: int, crop_fraction: float) -> dict:
    """What happens to an image before the network, as recorded in the manifests."""
    return {"decode": "tf.io.decode_image to RGB (grey, palette, CMYK, alpha converted; GIF first frame)",
            "resize_shorter": round(size / crop_fraction), "interpolation": "bilinear, antialiased",
            "crop": f"centre {size}x{size}",
            "preprocess_input": f"keras.applications.{backbone.module}.preprocess_input"}


def get_backbone(name: str, option: str = "--backbone") -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise UserError(f"{option} {name}: unknown; choose one of {', '.join(BACKBONES)}") from None


def keras_cache_dir() -> Path:
    """Where keras.applications caches weights: $KERAS_HOME/models, else ~/.keras/models (Keras
    falls back to /tmp/.keras when the home folder is not writable)."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return Path(home) / "models"


def resolve_weights(spec: str, backbone: Backbone) -> Weights:
    """Find the weights file and hash it, so a manifest can say exactly what computed a feature."""
    if spec == "random":
        return Weights("random", None, None)
    if spec == "imagenet":
        if backbone.imagenet_file is None:
            raise UserError(f"--weights imagenet: {backbone.name} has no ImageNet weights; use --weights random "
                            f"or a .keras/.h5 file")
        path = keras_cache_dir() / backbone.imagenet_file
        if not path.is_file():
            raise UserError(f"--weights imagenet: the ImageNet weights of {backbone.name} are not in the Keras cache "
                            f"({path}); run `newsdl models pull {backbone.name}` on a machine with internet and copy "
                            f"that file here (or set KERAS_HOME), or use --weights PATH")
        return Weights("imagenet", path, sha256_file(path))
    path = Path(spec).expanduser().resolve()
    if path.suffix not in (".keras", ".h5"):
        raise UserError(f"--weights {spec}: expected imagenet, random, or a .keras or .h5 file")
    if not path.is_file():
        raise UserError(f"--weights {spec}: no such file")
    return Weights(str(path), path, sha256_file(path))
