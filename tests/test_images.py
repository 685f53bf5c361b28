"""Image features: VGG16 FC7, the tf.data input pipeline, corrupt files, weights files, --gpu.

Every network runs with random weights or a local file: nothing is downloaded.
"""

from __future__ import annotations

import json
import warnings

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from PIL import Image

from newsdl import defaults
from newsdl.errors import UserError
from newsdl.features import images as img
from newsdl.features import run_featurize
from newsdl.features.backbones import get_backbone, resolve_weights
from testdata import write_broken_images, write_colour_variants, write_ingest, write_photos

SMALL = dict(text=False, backbone="small_cnn", weights="random")


def _ingest(ws, root, names, split="train"):
    articles = [{"id": f"a{k}", "text": "x", "split": split, "images": [{"path": name, "caption": name}]}
                for k, name in enumerate(names)]
    write_ingest(ws, articles, images_root=root)


def _part(ws, shard="part-0-of-1.parquet") -> dict[str, np.ndarray]:
    table = pq.read_table(ws / "features" / "images" / shard)
    return dict(zip(table.column("image_id").to_pylist(), np.array(table.column("fc7").to_pylist(), np.float32)))


def test_vgg16_fc7_is_4096_float32_and_matches_a_direct_predict(tmp_path):
    root = tmp_path / "photos"
    names = write_photos(root, 3, max_side=300)
    ws = tmp_path / "ws"
    _ingest(ws, root, names)
    result = run_featurize(ws, text=False, backbone="vgg16", weights="random", batch_size=2)
    assert result["images"]["featurized"] == 3 and result["images"]["dim"] == 4096
    schema = pq.read_schema(ws / "features" / "images" / "part-0-of-1.parquet")
    assert schema.field("fc7").type == pa.list_(pa.float32(), 4096)
    assert pq.read_table(ws / "features" / "images" / "part-0-of-1.parquet").column("backbone").to_pylist() == ["vgg16"] * 3
    features = _part(ws)

    # The same network, built here by hand: Keras VGG16 cut at fc2 (FC7), same seed for its random weights.
    keras.utils.set_random_seed(defaults.SEED)
    vgg = keras.applications.VGG16(weights=None)
    fc7 = keras.Model(vgg.input, vgg.get_layer("fc2").output)
    load = img.make_loader(224, keras.applications.vgg16.preprocess_input)
    batch = np.stack([load(tf.constant(str(root / name))).numpy() for name in names])
    expected = fc7.predict(batch, verbose=0)
    got = np.stack([features[f"a{k}#0"] for k in range(3)])
    assert got.dtype == np.float32 and got.shape == (3, 4096)
    assert (got >= 0).all() and (got > 0).any()  # after the ReLU
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got[0], got[1])


def test_decoding_brings_every_colour_model_to_rgb_resized_and_centre_cropped(tmp_path):
    expected = write_colour_variants(tmp_path)
    load = img.make_loader(64, lambda x: x)  # no preprocess_input: compare pixels
    for name, reference in expected.items():
        got = load(tf.constant(str(tmp_path / name))).numpy()
        assert got.shape == (64, 64, 3), name
        side = round(64 / 0.875)
        w, h = reference.size
        scale = side / min(w, h)
        resized = reference.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.Resampling.BILINEAR)
        left, top = (resized.width - 64) // 2, (resized.height - 64) // 2
        want = np.asarray(resized.crop((left, top, left + 64, top + 64)), np.float32)
        assert np.abs(got - want).mean() < 4.0, name  # JPEG and resampling differ by a few levels, no more
    gif = load(tf.constant(str(tmp_path / "animated.gif"))).numpy()
    negative = 255 - np.asarray(expected["animated.gif"].resize((73, 73)).crop((4, 4, 68, 68)), np.float32)
    assert np.abs(gif - negative).mean() > 40  # the first frame, not the second


def test_corrupt_and_unsafe_images_are_skipped_with_reasons(tmp_path):
    root = tmp_path / "root"
    broken = write_broken_images(root)
    good = write_photos(root, 4, max_side=120)
    ws = tmp_path / "ws"
    _ingest(ws, root, good[:2] + list(broken) + good[2:])
    result = run_featurize(ws, **SMALL, batch_size=3)
    assert result["images"]["featurized"] == 4 and result["images"]["rejected"] == len(broken)
    lines = [json.loads(line) for line in (ws / "features" / "images" / "rejected.jsonl").read_text().splitlines()]
    reasons = {line["path"]: line["reason"] for line in lines}
    assert set(reasons) == set(broken)
    for path, start in broken.items():
        assert reasons[path].startswith(start), (path, reasons[path])
    assert "no_scan" not in "".join(reasons[p] for p in reasons if p != "no_scan.jpg")
    features = _part(ws)
    assert len(features) == 4 and all(np.isfinite(f).all() and f.shape == (256,) for f in features.values())
    manifest = json.loads((ws / "features" / "manifest.json").read_text())
    assert manifest["counts"]["images_featurized"] + manifest["counts"]["images_rejected"] == manifest["counts"]["images"]


def test_weights_from_h5_and_keras_files_and_another_layer(tmp_path):
    root = tmp_path / "photos"
    names = write_photos(root, 3, max_side=120)
    paths = [str(root / n) for n in names]
    backbone = get_backbone("small_cnn")
    random = img.build_extractor(backbone, resolve_weights("random", backbone))
    trained = img.small_cnn(96)
    trained.set_weights([w * 1.5 + 0.01 for w in random.model.get_weights()])  # stands for fine-tuned weights
    trained.save_weights(tmp_path / "tuned.weights.h5")
    trained.save(tmp_path / "tuned.keras")
    load = img.make_loader(96, keras.applications.mobilenet_v2.preprocess_input)
    want = trained.predict(np.stack([load(tf.constant(p)).numpy() for p in paths]), verbose=0)
    for file in ("tuned.weights.h5", "tuned.keras"):
        weights = resolve_weights(str(tmp_path / file), backbone)
        assert len(weights.sha256) == 64
        ext = img.build_extractor(backbone, weights)
        got = np.stack([f for f, _ in img.featurize_files(ext, paths, 2)])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    inner = img.build_extractor(backbone, resolve_weights("random", backbone), layer="conv_128")
    assert inner.dim == 128 and inner.pooled
    with pytest.raises(UserError, match="--layer fc9: small_cnn has no such layer"):
        img.build_extractor(backbone, resolve_weights("random", backbone), layer="fc9")
    with pytest.raises(UserError, match="does not fit"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns about each layer it cannot fill, then raises
        img.build_extractor(get_backbone("resnet50"), resolve_weights(str(tmp_path / "tuned.weights.h5"), backbone))


def test_missing_imagenet_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    with pytest.raises(UserError, match=r"run `newsdl models pull vgg16` on a machine with internet"):
        resolve_weights("imagenet", get_backbone("vgg16"))
    cached = tmp_path / "empty-keras-home" / "models" / get_backbone("resnet50").imagenet_file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"stand-in")
    assert resolve_weights("imagenet", get_backbone("resnet50")).path == cached
    with pytest.raises(UserError, match="small_cnn has no ImageNet weights"):
        resolve_weights("imagenet", get_backbone("small_cnn"))
    with pytest.raises(UserError, match="--backbone alexnet: unknown"):
        get_backbone("alexnet")
    with pytest.raises(UserError, match="expected imagenet, random, or a .keras or .h5 file"):
        resolve_weights(str(tmp_path / "weights.pt"), get_backbone("vgg16"))


def test_gpu_flag_exits_2_without_a_gpu_and_auto_falls_back(tmp_path):
    from conftest import run_cli

    root = tmp_path / "photos"
    _ingest(tmp_path / "ws", root, write_photos(root, 2, max_side=96))
    no_gpu = {"CUDA_VISIBLE_DEVICES": "", "NEWSDL_WORKSPACE": str(tmp_path / "ws")}
    args = ["featurize", "--no-text", "--backbone", "small_cnn", "--weights", "random"]
    strict = run_cli(*args, "--gpu", env=no_gpu)
    assert strict.returncode == 2, strict.stderr
    error = [line for line in strict.stderr.splitlines() if line.startswith("newsdl: error:")]
    assert len(error) == 1 and "no GPU" in error[0] and "Traceback" not in strict.stderr
    assert not (tmp_path / "ws" / "features" / "images").exists()  # it failed before any work
    auto = run_cli(*args, "--gpu", "auto", env=no_gpu)
    assert auto.returncode == 0, auto.stderr
    assert "--gpu auto: TensorFlow sees no GPU; running on the CPU" in auto.stderr
    assert "images: 2 images, 2 featurized" in auto.stdout


def test_select_device_without_a_gpu():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: the subprocess test above covers it with CUDA_VISIBLE_DEVICES=''")
    with pytest.raises(UserError, match="--gpu: TensorFlow sees no GPU"):
        img.select_device("on")
    assert img.select_device("auto") is None and img.select_device("off") is None


def test_featurizer_for_new_images_gives_the_stage_features(tmp_path):
    from newsdl.features import load_image_featurizer

    root = tmp_path / "photos"
    names = write_photos(root, 4, max_side=100)
    ws = tmp_path / "ws"
    _ingest(ws, root, names)
    run_featurize(ws, **SMALL)
    featurizer = load_image_featurizer(ws)
    features, reasons = featurizer(root, names[::-1] + ["../escape.jpg"])
    stage = _part(ws)
    assert reasons[:4] == [None] * 4 and reasons[4].startswith("image_path_escapes")
    np.testing.assert_allclose(features[:4], np.stack([stage[f"a{k}#0"] for k in (3, 2, 1, 0)]), rtol=1e-5, atol=1e-6)
    assert not features[4].any()


def test_images_root_missing_from_the_ingest_manifest_is_a_user_error(tmp_path):
    root = tmp_path / "photos"
    ws = tmp_path / "ws"
    _ingest(ws, root, write_photos(root, 1, max_side=64))
    manifest = ws / "ingest" / "manifest.json"
    manifest.write_text(manifest.read_text().replace(json.dumps(str(root.resolve())), "null"))
    with pytest.raises(UserError, match="images_root is null"):
        run_featurize(ws, **SMALL)


def test_cli_help_imports_neither_tensorflow_nor_gensim():
    import subprocess
    import sys

    code = ("import sys; from newsdl.cli import app; import newsdl.features.cli; "
            "print(sorted(m for m in ('tensorflow', 'gensim', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
