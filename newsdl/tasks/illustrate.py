"""illustrate: find the image that illustrates an article, and the
article an image illustrates, in a shared space of text and FC7.

Model: two towers, one over the article's word2vec mean and max, one over the image's FC7, each
standardised, then dropout, a ReLU layer and a linear projection to a unit-length
ILLUSTRATE_DIM space; trained with the symmetric contrastive (InfoNCE) loss over the batch's
pairs (the global batch's, on several workers too), early stopping on val recall@10 (text to
image). Baselines: regularised CCA in closed form
(regularisation tuned on val), and random ranking, the floor.

Pairs: training uses every image of every training article (each with its article's text);
val and test use each article's lead image (its first), so that ranking is one article against
one image, n x n, in both directions.

Files beside the model (whose output "embeddings" is both embeddings side by side): cca.npz, the
baseline's projection (loaded with allow_pickle=False), and recall_at_k.png.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from newsdl import defaults as td
from newsdl.errors import UserError
from newsdl.tasks import multimodal as mm
from newsdl.tasks import retrieval as R
from newsdl.tasks.layout import CCA, MODEL, RECALL_PLOT
from newsdl.tasks.task import Data, split_rows

log = logging.getLogger("newsdl.tasks")
GALLERIES = ("input", "workspace")  # predict --gallery


class Illustrate(mm.ImageTask):
    name, unit, test_unit = "illustrate", "pairs", "articles"
    epochs, batch_size = td.ILLUSTRATE_EPOCHS, td.ILLUSTRATE_BATCH
    monitor, mode, min_delta = "val_recall_at_10", "max", td.MULTIMODAL_MIN_DELTA["val_recall_at_10"]
    files = (CCA,)
    val_outputs = ("embeddings",)
    metric_keys = ("recall_at_1", "recall_at_5", "recall_at_10", "median_rank")
    main_metric, higher_is_better = "recall_at_10", True
    # input: rank the images of predict's input file; workspace: the workspace's own ingested
    # images (a photo desk's archive), for articles that come without pictures.
    predict_options = {"gallery": "input"}

    def check_option(self, name, value):
        if name == "gallery" and value not in GALLERIES:
            raise UserError(f"--gallery {value}: choose {' or '.join(GALLERIES)}")
        return value

    def model_config(self):
        return {"model": {"hidden": td.ILLUSTRATE_HIDDEN, "dim": td.ILLUSTRATE_DIM, "dropout": td.ILLUSTRATE_DROPOUT,
                          "l2": td.ILLUSTRATE_L2, "temperature": td.ILLUSTRATE_TEMPERATURE,
                          "cca_regs": list(td.CCA_REGS), "cca_dims": td.CCA_DIMS, "cca_power": td.CCA_POWER}}

    def heads(self, s):
        return ["two-tower"]

    def load(self, ws, s):
        """The pairs, and the CCA baseline fitted on train with its regularisation chosen on val."""
        images = mm.load_images(ws)
        rows = _rows(images, s["seed"])
        text = _text(images.text)
        t1 = time.monotonic()
        tr, va = rows["train"], rows["val"]
        ccas = R.CCA.fit_regs(text[tr], images.fc7[tr], td.CCA_REGS)
        scores = [R.recall_metrics(R.ranks(c.transform_x(text[va]), c.transform_y(images.fc7[va])))["recall_at_10"]
                  for c in ccas]
        best = ccas[int(np.argmax(scores))]
        log.info("illustrate: CCA val recall@10 %s -> reg %g (%.1f s)",
                 ", ".join(f"{r:g}: {v:.3f}" for r, v in zip(td.CCA_REGS, scores)), best.reg, time.monotonic() - t1)
        return Data({"text": text, "fc7": images.fc7}, {}, rows, fitted={"cca": best},
                    record={"fc7_dim": int(images.fc7.shape[1]), "text_dim": int(text.shape[1]), "cca_reg": best.reg,
                            "cca_val_recall_at_10": dict(zip(map(str, td.CCA_REGS), scores))},
                    summary={"features": [*td.MULTIMODAL_TEXT, "fc7"], "cca_val_recall_at_10": float(max(scores))})

    def build(self, data, s, head):
        tr = data.rows["train"]
        return build_model(data.x["text"][tr], data.x["fc7"][tr])

    def losses(self, y, pred, batch):
        """InfoNCE both ways over the global batch: article i must pick image i among the batch's
        images, and image i article i."""
        import keras
        import tensorflow as tf

        both = pred["embeddings"]
        dim = tf.shape(both)[-1] // 2
        t, i = both[:, :dim], both[:, dim:]
        labels = tf.cast(batch.offset, tf.int32) + tf.range(tf.shape(both)[0])
        a = keras.losses.sparse_categorical_crossentropy(
            labels, tf.matmul(t, batch.gather(i), transpose_b=True) / td.ILLUSTRATE_TEMPERATURE, from_logits=True)
        b = keras.losses.sparse_categorical_crossentropy(
            labels, tf.matmul(i, batch.gather(t), transpose_b=True) / td.ILLUSTRATE_TEMPERATURE, from_logits=True)
        return {"loss": 0.5 * (a + b)}

    def validate(self, data, outputs):
        both = outputs["embeddings"]
        d = both.shape[1] // 2
        m = R.recall_metrics(R.ranks(R.unit(both[:, :d]), R.unit(both[:, d:])))
        return {"val_recall_at_10": m["recall_at_10"], "val_median_rank": m["median_rank"]}

    def save(self, folder, data):
        data.fitted["cca"].save(folder / CCA)
        return [CCA]

    def evaluate(self, ws, saved):
        """Rank the test split both ways with the model, CCA and random."""
        images = mm.load_images(ws, saved.fitted)
        rows = _rows(images, saved.config["seed"])
        test = rows["test"]
        if len(test) < 2:
            raise UserError(f"{ws / 'ingest' / 'articles.parquet'}: fewer than two test articles with an image "
                            f"(field 'split'), nothing to rank for illustrate")
        text, fc7 = _text(images.text)[test], images.fc7[test]
        t_emb, i_emb = embed(self.load_model(saved.folder / MODEL), text, fc7)
        cca = R.CCA.load(saved.folder / CCA)
        embeddings = {"model": (t_emb, i_emb), "cca": (cca.transform_x(text), cca.transform_y(fc7))}
        rng = np.random.default_rng(saved.config["seed"])
        ranks = {name: (R.ranks(R.unit(t), R.unit(i)), R.ranks(R.unit(i), R.unit(t)))
                 for name, (t, i) in embeddings.items()}
        rand = rng.random((len(test), len(test)))
        ranks["random"] = (R.ranks_from_similarity(rand), R.ranks_from_similarity(rand.T))
        scores = {name: {**R.recall_metrics(a), "image_to_text": R.recall_metrics(b)} for name, (a, b) in ranks.items()}
        result = {"n_train": len(rows["train"]), "n_test": len(test), "n_val": len(rows["val"]), "scores": scores,
                  # Queries resampled against the whole test gallery, text to image.
                  "resample": lambda idx: {name: R.recall_metrics(r[0][idx]) for name, r in ranks.items()},
                  "model": {"features": [*td.MULTIMODAL_TEXT, "fc7"], "pairs": "test articles x their lead images"},
                  "baseline_params": {"cca": {"reg": cca.reg, "dims": int(len(cca.corr)), "power": td.CCA_POWER}}}
        return result, [recall_plot(saved.folder / RECALL_PLOT, ranks, len(test))]

    def predict(self, ws, saved, table, root, source, gallery: str = "input", top: int = max(td.RECALL_AT)):
        """For each article, the ``top`` best images among all of the input's usable images (and
        for each image the best articles), by the trained model; with ``gallery="workspace"``, the
        ``top`` best of the workspace's own images for each article."""
        if gallery == "workspace":
            return self.predict_from_workspace(ws, saved, table, top)
        new, rejects = mm.featurize_new(ws, table, root, source, int(saved.config["fitted"]["fc7_dim"]))
        if len(new.path) == 0:
            raise UserError(f"{source}: no usable image among the articles (field 'images'), nothing to rank")
        model = self.load_model(saved.folder / MODEL)
        t_emb, _ = embed(model, _text(new.article_text), None)
        _, i_emb = embed(model, None, new.fc7)
        sim = R.unit(t_emb) @ R.unit(i_emb).T
        records = []
        for a, row in zip(new.articles, sim):
            best = np.argsort(-row, kind="stable")[:top]
            records.append({"id": a, "kind": "article",
                            "images": [{"image": new.path[j], "article_id": str(new.article_id[j]),
                                        "score": round(float(row[j]), 4)} for j in best]})
        for j, col in enumerate(sim.T):
            best = np.argsort(-col, kind="stable")[:top]
            records.append({"id": str(new.article_id[j]), "kind": "image", "image": new.path[j],
                            "articles": [{"id": new.articles[a], "score": round(float(col[a]), 4)} for a in best]})
        return records, rejects, (len(new.articles), "articles")

    def predict_from_workspace(self, ws, saved, table, top: int):
        images = mm.load_images(ws, saved.fitted)
        path_of = mm.image_paths(ws)
        model = self.load_model(saved.folder / MODEL)
        t_emb, _ = embed(model, _text(mm.new_article_text(ws, table)), None)
        _, i_emb = embed(model, None, images.fc7)
        sim = R.unit(t_emb) @ R.unit(i_emb).T
        records = []
        for a, row in zip(table.column("id").to_pylist(), sim):
            best = np.argsort(-row, kind="stable")[:top]
            records.append({"id": str(a), "kind": "article", "gallery": "workspace",
                            "images": [{"image": path_of.get(images.image_id[j]), "image_id": str(images.image_id[j]),
                                        "article_id": str(images.article_id[j]), "caption": images.caption[j],
                                        "score": round(float(row[j]), 4)} for j in best]})
        log.info("illustrate: %d articles ranked against the workspace's %d images", len(records), len(images))
        return records, [], (len(records), "articles")


def _text(text: dict) -> np.ndarray:
    return np.concatenate([text[f] for f in td.MULTIMODAL_TEXT], axis=1).astype(np.float32)


def _rows(images: mm.Images, seed: int) -> dict:
    """Every image of a training article; val and test: each article's lead image."""
    rows = split_rows(images.split, np.ones(len(images), bool), seed, groups=images.article_id, unit="images")
    return {k: v if k == "train" else v[images.lead[v]] for k, v in rows.items()}



# ------------------------------------------------------------------ model

def build_model(text_train: np.ndarray, fc7_train: np.ndarray):
    import keras
    from keras import layers

    from newsdl.tasks.models import normalizer

    reg = keras.regularizers.L2(td.ILLUSTRATE_L2)

    def tower(name, data):
        inp = keras.Input((data.shape[1],), name=name)
        h = layers.Dropout(td.ILLUSTRATE_DROPOUT, name=f"{name}_dropout")(normalizer(f"{name}_norm", data)(inp))
        h = layers.Dense(td.ILLUSTRATE_HIDDEN, activation="relu", kernel_regularizer=reg, name=f"{name}_hidden")(h)
        h = layers.Dropout(td.ILLUSTRATE_DROPOUT, name=f"{name}_hidden_dropout")(h)
        h = layers.Dense(td.ILLUSTRATE_DIM, kernel_regularizer=reg, name=f"{name}_projection")(h)
        return inp, layers.UnitNormalization(name=f"{name}_embedding")(h)

    t_in, t = tower("text", text_train)
    i_in, i = tower("fc7", fc7_train)
    both = layers.Concatenate(name="embeddings")([t, i])
    return keras.Model([t_in, i_in], {"embeddings": both}, name="illustrate")


def embed(model, text: np.ndarray | None, fc7: np.ndarray | None, batch: int = 1024):
    """Text and image embeddings (unit length). The towers are separate, so one side may be None
    (its output is then None): the other side is fed zeros."""
    n = len(text) if text is not None else len(fc7)
    dims = [int(t.shape[-1]) for t in model.inputs]
    feed = {"text": text if text is not None else np.zeros((n, dims[0]), np.float32),
            "fc7": fc7 if fc7 is not None else np.zeros((n, dims[1]), np.float32)}
    both = model.predict(feed, batch_size=batch, verbose=0)["embeddings"]
    d = both.shape[1] // 2
    return (both[:, :d] if text is not None else None), (both[:, d:] if fc7 is not None else None)


def recall_plot(path: Path, ranks: dict, n: int) -> str:
    """Recall@K against K (log scale) for every system, text-to-image and image-to-text."""
    from newsdl.tasks.plots import pyplot, save_figure

    plt = pyplot()
    ks = np.unique(np.geomspace(1, max(n, 2), 60).astype(int))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), sharey=True)
    for ax, d, title in ((axes[0], 0, "text to image"), (axes[1], 1, "image to text")):
        for name, r in ranks.items():
            ax.plot(ks, R.recall_curve(r[d], ks), label=name, linewidth=2.2 if name == "model" else 1.2)
        for k in td.RECALL_AT:
            ax.axvline(k, color="grey", linewidth=0.5, linestyle=":")
        ax.set_xscale("log")
        ax.set_xlabel("K (log scale)")
        ax.set_title(f"illustrate: {title}, {n} test pairs")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall@K")
    axes[0].set_ylim(0, 1)
    axes[0].legend(loc="upper left")
    return save_figure(fig, path)


TASK = Illustrate()
