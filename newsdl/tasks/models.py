"""The Keras models: one trunk over the selected features, one head per task.

Trunk (the BreakingNews "adaptive CNN" layout): each feature family has its own branch —
  w2v_mean, w2v_max: standardised, one dense layer;
  tokens: the word2vec-initialised embedding, 1-D convolutions of several widths, global max
          pooling (a bag of the strongest n-gram detectors);
  bow: a weighted bag of term embeddings, i.e. a dense layer over the sparse TF-IDF vector;
  fc7: standardised, one dense layer, multiplied by the article's image mask (an article
       without images contributes zeros, and the mask itself is an input, so the network knows
       the modality is absent rather than seeing made-up pixels' features);
  gaz: the gazetteer's top places (geoloc only).
The branches are concatenated and go through the shared dense layers, then the task's head.

Every custom layer is registered under the package "newsdl" with a full get_config, so a model
file loads with ``keras.models.load_model(path, safe_mode=True)`` and no code from the file runs.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from newsdl import defaults as td  # noqa: E402

# Above this many word ids the embedding stays frozen: Adam's dense updates of a multi-million
# row table (pretrained GoogleNews vectors) would dominate every step.
EMBED_TRAINABLE_MAX_ROWS = 200_000
_EPS = 1e-7


def _unit(x, axis=-1):
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), _EPS))


@keras.saving.register_keras_serializable(package="newsdl")
class UnitToLatLon(keras.layers.Layer):
    """[..., 3] vector -> [..., 2] (lat, lon) in degrees, through its direction: longitude comes
    from atan2, so there is no seam at the dateline for the network to learn around."""

    def call(self, xyz):
        xyz = _unit(xyz)
        x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
        # A tiny floor keeps the gradient finite at a pole and moves latitudes by < 1e-6 rad.
        lat = ops.arctan2(z, ops.sqrt(x * x + y * y + 1e-12))
        lon = ops.arctan2(y, x)
        return ops.stack([lat, lon], axis=-1) * (180.0 / math.pi)

    def compute_output_shape(self, shape):
        return (*shape[:-1], 2)


@keras.saving.register_keras_serializable(package="newsdl")
class CellCentre(keras.layers.Layer):
    """The probability-weighted centre of the geo-cells, moved by a bounded learned offset.

    ``cells`` ([C, 3] unit vectors) are part of the config, so the file says where its cells are.
    """

    def __init__(self, cells, max_offset: float = td.CELL_OFFSET_MAX, **kwargs):
        super().__init__(**kwargs)
        self.cells = [list(map(float, c)) for c in np.asarray(cells, float)]
        self.max_offset = float(max_offset)
        self._cells = np.asarray(self.cells, np.float32)

    def call(self, inputs):
        probs, offset = inputs
        centre = _unit(ops.matmul(probs, ops.convert_to_tensor(self._cells)))
        return _unit(centre + self.max_offset * ops.tanh(offset))

    def compute_output_shape(self, shapes):
        return (shapes[0][0], 3)

    def get_config(self):
        return {**super().get_config(), "cells": self.cells, "max_offset": self.max_offset}


@keras.saving.register_keras_serializable(package="newsdl")
class TrustSoftmax(keras.layers.Layer):
    """Probabilities over [the head's own point, candidate place 1..K]; absent candidates get 0.

    Inputs: logits [B, 1 + K] and the candidates' mask [B, K]."""

    def call(self, inputs):
        logits, mask = inputs
        valid = ops.concatenate([ops.ones_like(mask[:, :1]), mask], axis=-1)
        return ops.softmax(ops.where(valid > 0, logits, -1e9), axis=-1)

    def compute_output_shape(self, shapes):
        return shapes[0]


@keras.saving.register_keras_serializable(package="newsdl")
class GeoMedian(keras.layers.Layer):
    """The point that minimises the expected distance under a discrete distribution of points:
    the weighted geometric median (Weiszfeld's iterations on the unit sphere's chords).

    It is the Bayes decision for the GCD metric. A point holding half the probability or more is
    the median exactly, so a trusted place is predicted as is, not dragged toward a compromise,
    and hedging happens only when no single point is likely enough.
    Inputs: weights [B, 1 + K], own point [B, 3], candidates [B, K, 3]."""

    def __init__(self, iterations: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.iterations = int(iterations)

    def call(self, inputs):
        weights, own, anchors = inputs
        points = ops.concatenate([own[:, None, :], anchors], axis=1)
        x = _unit(ops.sum(weights[..., None] * points, axis=1))
        for _ in range(self.iterations):
            dist = ops.sqrt(ops.sum(ops.square(points - x[:, None, :]), axis=-1) + 1e-12)
            w = weights / ops.maximum(dist, 1e-6)
            x = _unit(ops.sum(w[..., None] * points, axis=1))
        best = ops.argmax(weights, axis=-1)
        top = ops.take_along_axis(points, best[:, None, None], axis=1)[:, 0, :]
        return ops.where(ops.max(weights, axis=-1, keepdims=True) >= 0.5, top, x)

    def compute_output_shape(self, shapes):
        return (shapes[1][0], 3)

    def get_config(self):
        return {**super().get_config(), "iterations": self.iterations}


@keras.saving.register_keras_serializable(package="newsdl")
class MeanKm(keras.metrics.Mean):
    """Mean great-circle distance in km between (lat, lon) outputs and targets."""

    def __init__(self, name: str = "km", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        from newsdl.ops import great_circle_distance

        return super().update_state(great_circle_distance(y_true, y_pred), sample_weight=sample_weight)


@keras.saving.register_keras_serializable(package="newsdl")
class MaskedHuber(keras.losses.Loss):
    """Huber loss over the targets that are present (not NaN): shares, where a corpus has them
    for only some articles. The mean is over present targets."""

    def __init__(self, delta: float = td.HUBER_DELTA, name: str = "masked_huber", **kwargs):
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="sum", **kwargs)
        self.delta = float(delta)

    def call(self, y_true, y_pred):
        y_true = ops.reshape(ops.cast(y_true, y_pred.dtype), ops.shape(y_pred))
        present = ops.logical_not(ops.isnan(y_true))
        err = ops.abs(ops.where(present, y_true, 0.0) - ops.where(present, y_pred, 0.0))
        quad = ops.minimum(err, self.delta)
        loss = 0.5 * quad * quad + self.delta * (err - quad)
        n = ops.maximum(ops.sum(ops.cast(present, y_pred.dtype)), 1.0)
        return ops.where(present, loss, 0.0) / n

    def get_config(self):
        return {"name": self.name, "delta": self.delta}


# ------------------------------------------------------------------ builder

def _dense(units, name, activation="relu"):
    return keras.layers.Dense(units, activation=activation, name=name,
                              kernel_regularizer=keras.regularizers.L2(td.L2))


def _normalizer(name: str, data: np.ndarray):
    """Standardisation with the training rows' statistics, stored in the model's weights."""
    layer = keras.layers.Normalization(axis=-1, name=name)
    layer.adapt(data if len(data) else np.zeros((1, data.shape[1]), np.float32))
    return layer


def build_trunk(features: list[str], train_inputs: dict[str, np.ndarray], fitted: dict):
    """The inputs, the fused representation (after the shared dense layer), and the raw material
    of the wide (linear) path: the standardised dense features and the bag of words."""
    inputs, branches, wide = {}, [], {"dense": []}

    def inp(name, shape, dtype="float32"):
        inputs[name] = keras.Input(shape=shape, dtype=dtype, name=name)
        return inputs[name]

    for name in ("w2v_mean", "w2v_max"):
        if name in features:
            dim = train_inputs[name].shape[1]
            x = _normalizer(f"{name}_norm", train_inputs[name])(inp(name, (dim,)))
            wide["dense"].append(x)
            branches.append(_dense(td.BRANCH, f"{name}_dense")(x))
    if "tokens" in features:
        matrix = fitted["embedding"]
        emb = keras.layers.Embedding(matrix.shape[0], matrix.shape[1], name="word_embedding",
                                     trainable=matrix.shape[0] <= EMBED_TRAINABLE_MAX_ROWS)
        x = emb(inp("tokens", (train_inputs["tokens"].shape[1],), "int32"))
        emb.set_weights([matrix])
        x = keras.layers.SpatialDropout1D(0.1, name="word_dropout")(x)
        pooled = []
        for width in td.CNN_WIDTHS:
            c = keras.layers.Conv1D(td.CNN_FILTERS, width, activation="relu", name=f"conv{width}",
                                    kernel_regularizer=keras.regularizers.L2(td.L2))(x)
            pooled.append(keras.layers.GlobalMaxPooling1D(name=f"pool{width}")(c))
        branches.append(keras.layers.Concatenate(name="cnn")(pooled))
    if "bow" in features:
        ids = inp("bow_ids", (train_inputs["bow_ids"].shape[1],), "int32")
        weights = inp("bow_w", (train_inputs["bow_w"].shape[1],))
        terms = keras.layers.Embedding(fitted["bow_terms"] + 1, td.BRANCH, name="bow_embedding",
                                       embeddings_regularizer=keras.regularizers.L2(td.L2))(ids)
        bag = keras.layers.Dot(axes=1, name="bow_bag")([weights, terms])
        wide["bow"] = (ids, weights, fitted["bow_terms"] + 1)
        branches.append(keras.layers.Activation("relu", name="bow_relu")(
            keras.layers.BatchNormalization(name="bow_bn")(bag)))
    if "fc7" in features:
        dim = train_inputs["fc7"].shape[1]
        present = train_inputs["fc7_mask"][:, 0] > 0
        x = _normalizer("fc7_norm", train_inputs["fc7"][present])(inp("fc7", (dim,)))
        mask = inp("fc7_mask", (1,))
        wide["dense"] += [keras.layers.Multiply(name="fc7_norm_masked")([x, mask]), mask]
        x = keras.layers.Dropout(td.DROPOUT, name="fc7_dropout")(x)
        x = _dense(td.BRANCH, "fc7_dense")(x)
        branches.append(keras.layers.Multiply(name="fc7_masked")([x, mask]))
        branches.append(mask)
    if "gaz" in features:
        k = train_inputs["gaz_xyz"].shape[1]
        xyz = inp("gaz_xyz", (k, 3))
        inp("gaz_mask", (k,))
        feat = inp("gaz_feat", (train_inputs["gaz_feat"].shape[1],))
        flat = keras.layers.Concatenate(name="gaz_concat")([keras.layers.Flatten(name="gaz_flat")(xyz), feat])
        branches.append(_dense(td.BRANCH // 2, "gaz_dense")(flat))
    if not branches:
        raise ValueError("no features selected")
    x = branches[0] if len(branches) == 1 else keras.layers.Concatenate(name="fusion")(branches)
    x = keras.layers.Dropout(td.DROPOUT, name="fusion_dropout")(x)
    x = _dense(td.HIDDEN, "shared_dense")(x)
    x = keras.layers.Dropout(td.DROPOUT, name="shared_dropout")(x)
    return inputs, x, wide


def head_output(h, wide: dict, units: int, name: str, init: dict | None = None):
    """Wide and deep: a linear model on the raw features (the bag of words as a weighted bag of
    per-term weights) plus a dense layer on the shared representation.

    With ``init`` (a linear model fitted in closed form on train, its regularisation chosen on val:
    baselines.fit_wide_*), the wide path holds that model, frozen, and the deep layer starts at
    zero: training begins at the tuned linear model and learns what it cannot express, under
    early stopping. Small, noisy corpora need a shrinkage that gradient descent with a fixed
    weight decay does not find; the closed-form fit does, in seconds."""
    frozen = init is not None
    deep = keras.layers.Dense(units, name=f"{name}_deep", kernel_initializer="zeros" if frozen else "glorot_uniform")
    terms = [deep(h)]
    layers = {"deep": deep}
    if wide["dense"]:
        flat = wide["dense"][0] if len(wide["dense"]) == 1 else \
            keras.layers.Concatenate(name=f"{name}_wide_in")(wide["dense"])
        layers["dense"] = keras.layers.Dense(units, name=f"{name}_wide", use_bias=False, trainable=not frozen,
                                             kernel_regularizer=None if frozen else keras.regularizers.L2(td.L2))
        terms.append(layers["dense"](flat))
    if "bow" in wide:
        ids, weights, rows = wide["bow"]
        layers["bow"] = keras.layers.Embedding(
            rows, units, name=f"{name}_wide_bow", embeddings_initializer="zeros", trainable=not frozen,
            embeddings_regularizer=None if frozen else keras.regularizers.L2(td.L2))
        terms.append(keras.layers.Dot(axes=1, name=f"{name}_wide_bag")([weights, layers["bow"](ids)]))
    if frozen:
        layers["deep"].set_weights([np.zeros((h.shape[-1], units), np.float32), np.asarray(init["bias"], np.float32)])
        if "dense" in layers:
            layers["dense"].set_weights([np.asarray(init["dense"], np.float32)])
        if "bow" in layers:
            layers["bow"].set_weights([np.asarray(init["bow"], np.float32)])
    return terms[0] if len(terms) == 1 else keras.layers.Add(name=f"{name}_logits")(terms)


def build_geoloc(features, train_inputs, fitted, head):
    """Outputs: latlon (the prediction); with the gazetteer, also own (the head's point, trained
    with the GCD loss) and trust (which of own and the named places is right, trained with
    cross-entropy), latlon being their geometric median; with cells, cell (cross-entropy)."""
    inputs, h, _ = build_trunk(features, train_inputs, fitted)
    outputs = {}
    anchor = None
    if "gaz" in features:
        k = train_inputs["gaz_xyz"].shape[1]
        trust_in = keras.layers.Concatenate(name="trust_in")([h, inputs["gaz_feat"]])
        # The head's own point starts at the most-mentioned place (coefficients 1, 0, 0 on the
        # candidates' unit vectors) and learns how far to move from it: hedging relative to the
        # evidence is far easier to learn than mapping coordinates from scratch.
        coef = keras.layers.Dense(k, name="anchor_coef", kernel_initializer="zeros",
                                  bias_initializer=keras.initializers.Constant([1.0] + [0.0] * (k - 1)))(trust_in)
        anchor = keras.layers.Dot(axes=1, name="anchor")([coef, inputs["gaz_xyz"]])
    if head == "regress":
        # With an anchor, the offset starts at zero: the own point starts on the named place.
        own = keras.layers.Dense(3, name="xyz", kernel_initializer="zeros" if anchor is not None else "glorot_uniform")(h)
    else:
        cells = np.asarray(fitted["cells"], np.float32)
        probs = keras.layers.Dense(len(cells), activation="softmax", name="cell")(h)
        offset = keras.layers.Dense(3, name="cell_offset", kernel_initializer="zeros")(h)
        own = CellCentre(cells, name="cell_centre")([probs, offset])
        outputs["cell"] = probs
    if anchor is not None:
        own = keras.layers.Add(name="own_xyz")([own, anchor])
    own = keras.layers.UnitNormalization(name="own_unit")(own)
    if "gaz" in features:
        # Trust depends on the article (h) and on the candidates' own numbers (mentions, share,
        # city or country), which the layer sees directly.
        # Trust starts on the most-mentioned place (probability ~0.9, so the median is that place):
        # the untrained model is the gazetteer look-up, and training learns when to doubt it.
        logits = keras.layers.Dense(1 + k, name="trust_logits", kernel_initializer="zeros",
                                    bias_initializer=keras.initializers.Constant([0.0, 3.0] + [0.0] * (k - 1)))(trust_in)
        trust = TrustSoftmax(name="trust")([logits, inputs["gaz_mask"]])
        outputs["own"] = UnitToLatLon(name="own")(own)
        outputs["trust"] = trust
        own = GeoMedian(name="median")([trust, own, inputs["gaz_xyz"]])
    outputs = {"latlon": UnitToLatLon(name="latlon")(own), **outputs}
    return keras.Model(inputs, outputs, name=f"geoloc_{head}")


def build_source(features, train_inputs, fitted):
    inputs, h, wide = build_trunk(features, train_inputs, fitted)
    logits = head_output(h, wide, len(fitted["classes"]), "source", fitted.get("wide_init"))
    probs = keras.layers.Activation("softmax", name="source")(logits)
    return keras.Model(inputs, {"source": probs}, name="source")


def build_popularity(features, train_inputs, fitted):
    inputs, h, wide = build_trunk(features, train_inputs, fitted)
    outputs = {}
    for name in fitted["targets"]:
        mean, std = fitted["target_stats"][name]
        # Standardised inside, log1p units outside: the output starts at the training mean.
        z = head_output(h, wide, 1, f"{name}_z", (fitted.get("wide_init") or {}).get(name))
        outputs[name] = keras.layers.Rescaling(scale=std, offset=mean, name=name)(z)
    return keras.Model(inputs, outputs, name="popularity")


def load(path) -> keras.Model:
    """A saved model, loaded in safe mode (no code from the file runs); not compiled."""
    import newsdl.ops.loss  # noqa: F401  (registers GreatCircleLoss for the file's config)

    return keras.models.load_model(path, safe_mode=True, compile=False)
