"""`newsdl train|evaluate|predict illustrate`: find the image that illustrates an article, and the
article an image illustrates, in a shared space of text and FC7.

Model: two towers, one over the article's word2vec mean and max, one over the image's FC7, each
standardised, then dropout, a ReLU layer and a linear projection to a unit-length
ILLUSTRATE_DIM space; trained with the symmetric contrastive (InfoNCE) loss over the batch's
pairs, early stopping on val recall@10 (text to image). Baselines: regularised CCA in closed form
(regularisation tuned on val), and random ranking, the floor.

Pairs: training uses every image of every training article (each with its article's text);
val and test use each article's lead image (its first), so that ranking is one article against
one image, n x n, in both directions.

Layout of DIR/models/illustrate/: model.keras (the two towers; the output is both embeddings
side by side), cca.npz (the baseline's projection, loaded with allow_pickle=False), config.json,
history.csv, run/, metrics.json, recall_at_k.png, manifest.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from newsdl import defaults as td
from newsdl import workspace
from newsdl.errors import UserError
from newsdl.tasks import multimodal as mm
from newsdl.tasks.layout import CCA, CONFIG, HISTORY, MODEL, RECALL_PLOT, evaluated, write_evaluation
from newsdl.tasks import retrieval as R

log = logging.getLogger("newsdl.tasks")
TASK = "illustrate"


def _model_config() -> dict:
    return {"hidden": td.ILLUSTRATE_HIDDEN, "dim": td.ILLUSTRATE_DIM, "dropout": td.ILLUSTRATE_DROPOUT,
            "l2": td.ILLUSTRATE_L2, "temperature": td.ILLUSTRATE_TEMPERATURE, "cca_regs": list(td.CCA_REGS),
            "cca_dims": td.CCA_DIMS, "cca_power": td.CCA_POWER}


def _text(text: dict) -> np.ndarray:
    return np.concatenate([text[f] for f in td.MULTIMODAL_TEXT], axis=1).astype(np.float32)


def _rows(images: mm.Images, seed: int) -> dict:
    rows = {"train": images.rows("train"), "val": images.rows("val", images.lead),
            "test": images.rows("test", images.lead)}
    if len(rows["val"]) == 0:
        rows = mm.split_or_hold_out(images, rows, seed)
        rows["val"] = rows["val"][images.lead[rows["val"]]]
    if len(rows["train"]) < 2:
        raise UserError("fewer than two images in the train split: nothing to learn a shared space from")
    return rows


# ------------------------------------------------------------------ model

def _contrastive_loss(temperature: float):
    import keras
    from keras import ops

    class SymmetricContrastive(keras.losses.Loss):
        """InfoNCE both ways over the batch: article i must pick image i among the batch's images,
        and image i article i. y_pred is [text | image] embeddings side by side; y_true unused."""

        def __init__(self, name="symmetric_contrastive", **kwargs):
            super().__init__(name=name, **kwargs)

        def call(self, y_true, y_pred):
            dim = ops.shape(y_pred)[-1] // 2
            t, i = y_pred[:, :dim], y_pred[:, dim:]
            logits = ops.matmul(t, ops.transpose(i)) / temperature
            labels = ops.arange(ops.shape(logits)[0])
            a = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            b = keras.losses.sparse_categorical_crossentropy(labels, ops.transpose(logits), from_logits=True)
            return 0.5 * (a + b)

    return SymmetricContrastive()


def build(text_train: np.ndarray, fc7_train: np.ndarray):
    import keras
    from keras import layers

    reg = keras.regularizers.L2(td.ILLUSTRATE_L2)

    def tower(name, data):
        inp = keras.Input((data.shape[1],), name=name)
        norm = layers.Normalization(name=f"{name}_norm")
        norm.adapt(data)
        h = layers.Dropout(td.ILLUSTRATE_DROPOUT, name=f"{name}_dropout")(norm(inp))
        h = layers.Dense(td.ILLUSTRATE_HIDDEN, activation="relu", kernel_regularizer=reg, name=f"{name}_hidden")(h)
        h = layers.Dropout(td.ILLUSTRATE_DROPOUT, name=f"{name}_hidden_dropout")(h)
        h = layers.Dense(td.ILLUSTRATE_DIM, kernel_regularizer=reg, name=f"{name}_projection")(h)
        return inp, layers.UnitNormalization(name=f"{name}_embedding")(h)

    t_in, t = tower("text", text_train)
    i_in, i = tower("fc7", fc7_train)
    both = layers.Concatenate(name="embeddings")([t, i])
    return keras.Model([t_in, i_in], both, name="illustrate")


def embed(model, text: np.ndarray | None, fc7: np.ndarray | None, batch: int = 1024):
    """Text and image embeddings (unit length). The towers are separate, so one side may be None
    (its output is then None): the other side is fed zeros."""
    n = len(text) if text is not None else len(fc7)
    dims = [int(t.shape[-1]) for t in model.inputs]
    feed = {"text": text if text is not None else np.zeros((n, dims[0]), np.float32),
            "fc7": fc7 if fc7 is not None else np.zeros((n, dims[1]), np.float32)}
    both = model.predict(feed, batch_size=batch, verbose=0)
    d = both.shape[1] // 2
    return (both[:, :d] if text is not None else None), (both[:, d:] if fc7 is not None else None)


def _ranking_callback(text_val, fc7_val):
    import keras

    class ValRecall(keras.callbacks.Callback):
        """Adds val recall@10 and median rank (text to image, lead images) to the epoch's logs."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is None:
                return
            t, i = embed(self.model, text_val, fc7_val)
            m = R.recall_metrics(R.ranks(R.unit(t), R.unit(i)))
            logs["val_recall_at_10"] = m["recall_at_10"]
            logs["val_median_rank"] = m["median_rank"]

    return ValRecall()


# ------------------------------------------------------------------ train

def train(ws: Path, *, force: bool = False, **options) -> dict:
    """Fit the CCA baseline and train the two towers in ``ws``; return a summary."""
    import keras

    from newsdl.tasks.data import dataset, upstream

    ws = Path(ws)
    s = mm.settings(TASK, **options)
    folder = ws / "models" / TASK
    config = {"task": TASK, **s, "model": _model_config()}
    inputs_meta = upstream(ws)
    skipped = mm.up_to_date(folder, inputs_meta, config, force)
    if skipped is not None:
        return skipped
    started, t0 = mm.start_training(folder, force)

    images = mm.load_images(ws)
    rows = _rows(images, s["seed"])
    text = _text(images.text)
    log.info("illustrate: %d train pairs (every image), %d val articles (lead image)", len(rows["train"]),
             len(rows["val"]))

    # Baseline: CCA with its regularisation chosen on val.
    t1 = time.monotonic()
    ccas = R.CCA.fit_regs(text[rows["train"]], images.fc7[rows["train"]], td.CCA_REGS)
    val_scores = [R.recall_metrics(R.ranks(c.transform_x(text[rows["val"]]), c.transform_y(images.fc7[rows["val"]])))
                  ["recall_at_10"] for c in ccas]
    best_cca = ccas[int(np.argmax(val_scores))]
    best_cca.save(folder / CCA)
    log.info("illustrate: CCA val recall@10 %s -> reg %g (%.1f s)",
             ", ".join(f"{r:g}: {v:.3f}" for r, v in zip(td.CCA_REGS, val_scores)), best_cca.reg,
             time.monotonic() - t1)

    mm.set_determinism(s["seed"])
    model = build(text[rows["train"]], images.fc7[rows["train"]])
    model.compile(optimizer=keras.optimizers.Adam(s["lr"]), loss=_contrastive_loss(td.ILLUSTRATE_TEMPERATURE),
                  jit_compile=False)
    x = {"text": text, "fc7": images.fc7}
    y = np.zeros((len(images), 1), np.float32)
    steps = int(np.ceil(len(rows["train"]) / s["batch_size"]))
    identity = {"config": config, "inputs": [i["sha256"] for i in inputs_meta]}
    done = mm.fit(model, lambda first: dataset(x, y, rows["train"], s["batch_size"], seed=s["seed"],
                                               epochs=(first, s["epochs"])),
                  dataset(x, y, rows["val"], s["batch_size"]), folder=folder, name="illustrate", s=s, steps=steps,
                  n_train=len(rows["train"]), monitor="val_recall_at_10", mode="max", identity=identity,
                  extra_callbacks=[_ranking_callback(text[rows["val"]], images.fc7[rows["val"]])])

    mm.publish(folder, {MODEL: folder / "run" / "best.keras", HISTORY: folder / "run" / "history.csv"})
    summary = {"task": TASK, "folder": str(folder), "head": "two-tower", "features": [*td.MULTIMODAL_TEXT, "fc7"],
               "n_train": int(len(rows["train"])), "n_val": int(len(rows["val"])),
               "val_score": done["val_best"], "best_epoch": done["best_epoch"], "epochs_run": done["epochs_run"],
               "cca_val_recall_at_10": float(max(val_scores)), "seconds": round(time.monotonic() - t0, 1)}
    workspace.write_json(folder / CONFIG, {**config, "fitted": {"fc7_dim": int(images.fc7.shape[1]),
                                                                   "text_dim": int(text.shape[1]),
                                                                   "cca_reg": best_cca.reg,
                                                                   "cca_val_recall_at_10": dict(zip(map(str, td.CCA_REGS),
                                                                                                    val_scores))},
                                              "summary": summary})
    workspace.write_manifest(folder, "train", inputs=inputs_meta, config=config,
                             counts={"train": summary["n_train"], "val": summary["n_val"]},
                             outputs=[MODEL, CONFIG, HISTORY, CCA], started=started,
                             extra={"task": TASK})
    return summary


# ------------------------------------------------------------------ evaluate

def evaluate(ws: Path, *, force: bool = False) -> dict:
    """Rank the test split both ways with the model, CCA and random; write and return metrics.json."""
    from newsdl.tasks import metrics as M
    from newsdl.tasks.data import upstream
    from newsdl.tasks.models import load

    ws = Path(ws)
    folder, config = mm.read_saved(ws, TASK, (CCA,))
    inputs_meta = upstream(ws)
    key = {"model_sha256": workspace.sha256_file(folder / MODEL),
           "cca_sha256": workspace.sha256_file(folder / CCA)}
    stored = evaluated(folder, inputs_meta, key, force)
    if stored is not None:
        return stored
    t0, started = time.monotonic(), workspace.now()
    images = mm.load_images(ws)
    rows = _rows(images, config["seed"])
    test = rows["test"]
    if len(test) < 2:
        raise UserError(f"{ws / 'ingest' / 'articles.parquet'}: fewer than two test articles with an image "
                        f"(field 'split'), nothing to rank for illustrate")
    text, fc7 = _text(images.text)[test], images.fc7[test]
    if fc7.shape[1] != config["fitted"]["fc7_dim"] or text.shape[1] != config["fitted"]["text_dim"]:
        raise UserError(f"{folder / CONFIG}: the model reads {config['fitted']['fc7_dim']}-d FC7 and "
                        f"{config['fitted']['text_dim']}-d text, the workspace has {fc7.shape[1]} and "
                        f"{text.shape[1]}; retrain with `newsdl train illustrate --force`")
    t_emb, i_emb = embed(load(folder / MODEL), text, fc7)
    cca = R.CCA.load(folder / CCA)
    embeddings = {"model": (t_emb, i_emb), "cca": (cca.transform_x(text), cca.transform_y(fc7))}
    rng = np.random.default_rng(config["seed"])
    ranks = {name: (R.ranks(R.unit(t), R.unit(i)), R.ranks(R.unit(i), R.unit(t))) for name, (t, i) in embeddings.items()}
    rand = rng.random((len(test), len(test)))
    ranks["random"] = (R.ranks_from_similarity(rand), R.ranks_from_similarity(rand.T))
    scores = {name: {**R.recall_metrics(a), "image_to_text": R.recall_metrics(b)} for name, (a, b) in ranks.items()}
    model_scores = scores.pop("model")
    metrics = {
        "task": TASK,
        "n_train": int(len(rows["train"])),
        "n_test": int(len(test)),
        "test": model_scores,
        "baselines": scores,
        "main_metric": M.MAIN[TASK][0],
        "beats_every_baseline": all(M.beats(TASK, model_scores, b) for b in scores.values()),
        "model": {"head": "two-tower", "features": [*td.MULTIMODAL_TEXT, "fc7"],
                  "best_epoch": config.get("summary", {}).get("best_epoch"), "n_val": int(len(rows["val"])),
                  "pairs": "test articles x their lead images"},
        "baseline_params": {"cca": {"reg": cca.reg, "dims": int(len(cca.corr)), "power": td.CCA_POWER}},
    }
    plot = recall_plot(folder / RECALL_PLOT, ranks, len(test))
    write_evaluation(folder, metrics, [plot], inputs_meta, key, started, time.monotonic() - t0)
    return metrics


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


# ------------------------------------------------------------------ predict

def predict(ws: Path, input_path: Path, *, out: Path | None = None, images_root: Path | None = None,
            top: int = max(td.RECALL_AT)) -> dict:
    """For each article of INPUT, the ``top`` best images among all of INPUT's usable images (and
    for each image the best articles), by the trained model."""
    from newsdl.tasks.models import load
    from newsdl.tasks.predict import write_predictions, default_out, predict_summary

    ws, input_path = Path(ws), Path(input_path).expanduser()
    folder, config = mm.read_saved(ws, TASK)
    out = Path(out).expanduser() if out else default_out(ws, TASK, input_path)
    if out.suffix not in (".jsonl", ".parquet"):
        raise UserError(f"--out {out}: expected a .jsonl or .parquet file name")
    new, rejects, rejected_file = mm.featurize_new(ws, input_path, images_root, out, int(config["fitted"]["fc7_dim"]))
    if len(new.path) == 0:
        raise UserError(f"{input_path}: no usable image among the articles (field 'images'), nothing to rank")
    model = load(folder / MODEL)
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
    write_predictions(out, records)
    return predict_summary(out, len(new.articles), rejects, rejected_file)
