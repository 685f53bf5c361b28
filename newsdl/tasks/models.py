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

Custom layers (geoloc's) are registered under the package "newsdl" with a full get_config, so a
model file loads with ``keras.models.load_model(path, safe_mode=True)`` and no code from it runs.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from newsdl import defaults as td  # noqa: E402

# Above this many word ids the embedding stays frozen: Adam's dense updates of a multi-million
# row table (pretrained GoogleNews vectors) would dominate every step.
EMBED_TRAINABLE_MAX_ROWS = 200_000


# ------------------------------------------------------------------ builder

def _dense(units, name, activation="relu"):
    return keras.layers.Dense(units, activation=activation, name=name,
                              kernel_regularizer=keras.regularizers.L2(td.L2))


@keras.saving.register_keras_serializable(package="newsdl")
class RangedNormalization(keras.layers.Normalization):
    """Standardisation of inputs first clamped to the training rows' range, column by column.

    Training rows pass unchanged, so the model trains exactly as without the clamp. A new article
    can sit far outside that range where long training articles saturate a column (word2vec's max
    over hundreds of words): a short story's w2v_max lies hundreds of deviations out there, which
    pushed every unit of the next layer past anything seen in training and sent a story that names
    only Paris to the Atlantic. Clamped, it is an unusual article, not an impossible one."""

    def build(self, input_shape):
        super().build(input_shape)
        dim = (int(input_shape[-1]),)
        self.low = self.add_weight(name="low", shape=dim, initializer=keras.initializers.Constant(-3e38),
                                   trainable=False)
        self.high = self.add_weight(name="high", shape=dim, initializer=keras.initializers.Constant(3e38),
                                    trainable=False)

    def call(self, inputs):
        return super().call(keras.ops.clip(inputs, self.low, self.high))


def normalizer(name: str, data: np.ndarray):
    """Standardisation with the training rows' statistics and range, stored in the model's weights
    (floored variances; baselines.dense_blocks does the same in numpy)."""
    from newsdl.tasks.data import floored_variance

    data = data if len(data) else np.zeros((1, data.shape[1]), np.float32)
    layer = RangedNormalization(axis=-1, name=name)
    layer.adapt(data)
    mean, var, count, _, _ = layer.get_weights()
    layer.set_weights([mean, floored_variance(var).astype(var.dtype), count, data.min(axis=0).astype(mean.dtype),
                       data.max(axis=0).astype(mean.dtype)])
    # The layer standardises with tensors derived from its weights when adapt() ends; without this
    # the new variances would reach only a reloaded model, and training would see the unfloored ones.
    layer.finalize_state()
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
            x = normalizer(f"{name}_norm", train_inputs[name])(inp(name, (dim,)))
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
        x = normalizer("fc7_norm", train_inputs["fc7"][present])(inp("fc7", (dim,)))
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


def head_output(h, wide: dict, units: int, name: str, init: dict | None = None, with_linear: bool = False):
    """Wide and deep: a linear model on the raw features (the bag of words as a weighted bag of
    per-term weights) plus a dense layer on the shared representation.

    With ``init`` (a linear model fitted in closed form on train, its regularisation chosen on val:
    baselines.fit_wide_*), the wide path holds that model, frozen, and the deep layer starts at
    zero: training begins at the tuned linear model and learns what it cannot express, under
    early stopping. Small, noisy corpora need a shrinkage that gradient descent with a fixed
    weight decay does not find; the closed-form fit does, in seconds.

    ``with_linear``: returns (logits, the wide path's own logits or None), for a late fusion of
    the two fitted on val."""
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
    logits = terms[0] if len(terms) == 1 else keras.layers.Add(name=f"{name}_logits")(terms)
    if not with_linear:
        return logits
    wide_terms = terms[1:]
    if not wide_terms:
        return logits, None
    linear = keras.layers.Add(name=f"{name}_linear")(wide_terms) if len(wide_terms) > 1 else wide_terms[0]
    return logits, linear
