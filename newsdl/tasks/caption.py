"""`newsdl train|evaluate|predict caption`: generate an image's caption from its FC7 (and, with
``--context article``, its article's word2vec mean) with a Show-and-Tell LSTM decoder.

Layout of DIR/models/caption/:
  model.keras   the teacher-forcing model (the decoders are rebuilt from its layers)
  vocab.json    the caption vocabulary: <pad>, <unk>, <start>, <end>, then words by frequency
  config.json   settings, vocabulary size, word2vec hits, the val loss, a summary
  history.csv   per-epoch losses;  run/  the training run (best.keras, backup/ while it runs)
  metrics.json  BLEU-1, BLEU-4, METEOR, ROUGE-L, CIDEr of the model and of the baselines
  manifest.json written last

Captions are compared as the suite's tokenizer writes them (lower case, digits as '#'), for the
model and the baselines alike, then through pycocoevalcap's PTB tokenizer and scorers.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from newsdl import defaults as td
from newsdl import workspace
from newsdl.errors import UserError
from newsdl.tasks import multimodal as mm
from newsdl.tasks.layout import CONFIG, HISTORY, MODEL, VOCAB, evaluated, write_evaluation

log = logging.getLogger("newsdl.tasks")
TASK = "caption"


def _model_config() -> dict:
    """The defaults the model is built with: part of the config, so a change retrains."""
    return {"units": td.CAPTION_UNITS, "embed": td.CAPTION_EMBED, "dropout": td.CAPTION_DROPOUT, "l2": td.CAPTION_L2,
            "max_len": td.CAPTION_MAX_LEN, "min_count": td.CAPTION_MIN_COUNT, "vocab_max": td.CAPTION_VOCAB_MAX,
            "length_alpha": td.CAPTION_LENGTH_ALPHA}


def _data(ws: Path, seed: int):
    """Images with a caption, their tokens, and the rows of each split."""
    from newsdl.tasks.caption_model import caption_tokens

    images = mm.load_images(ws)
    tokens = [caption_tokens(c) for c in images.caption]
    has = np.array([len(t) > 0 for t in tokens], bool)
    rows = {s: images.rows(s, has) for s in ("train", "val", "test")}
    return images, tokens, mm.split_or_hold_out(images, rows, seed)


def _inputs(images, context: str) -> dict:
    x = {"fc7": images.fc7}
    if context == "article":
        x["context"] = images.text["w2v_mean"]
    return x


def train(ws: Path, *, force: bool = False, **options) -> dict:
    """Train the caption model in ``ws``; return a summary. Up to date: returns at once."""
    from newsdl.tasks.data import upstream

    ws = Path(ws)
    s = mm.settings(TASK, **options)
    folder = ws / "models" / TASK
    config = {"task": TASK, **s, "model": _model_config()}
    inputs_meta = upstream(ws)
    skipped = mm.up_to_date(folder, inputs_meta, config, force)
    if skipped is not None:
        return skipped
    started, t0 = mm.start_training(folder, force)

    from newsdl.tasks import caption_model as cm
    from newsdl.tasks.data import dataset

    images, tokens, rows = _data(ws, s["seed"])
    vocab = cm.Vocabulary.build([tokens[i] for i in rows["train"]])
    # Sequences as long as the longest training caption (at most CAPTION_MAX_LEN): an LSTM step
    # costs the same on padding, and short news-caption corpora would pay for 30 steps otherwise.
    max_len = min(td.CAPTION_MAX_LEN, max(len(tokens[i]) for i in rows["train"]))
    words_in, words_out = cm.sequences(tokens, vocab, max_len)
    kv_path = ws / "features" / "word2vec.kv"
    kv = None
    if kv_path.is_file():
        from newsdl.features.vectors import read_vectors

        kv = read_vectors(kv_path)
    dim = td.CAPTION_EMBED if kv is None else min(td.CAPTION_EMBED, kv.vector_size)
    embedding, found = cm.embedding_init(vocab, kv, dim, s["seed"])
    log.info("caption: %d train, %d val images; vocabulary %d words (%d from word2vec); context %s",
             len(rows["train"]), len(rows["val"]), len(vocab), found, s["context"])

    mm.set_determinism(s["seed"])
    x = {**_inputs(images, s["context"]), "words": words_in}
    weight = (words_out != cm.PAD_ID).astype(np.float32)
    model = cm.build(len(vocab), images.fc7[rows["train"]],
                     x["context"][rows["train"]] if "context" in x else None, embedding=embedding,
                     max_len=max_len)
    cm.compile_model(model, s["lr"])
    steps = int(np.ceil(len(rows["train"]) / s["batch_size"]))
    val_rows = rows["val"] if len(rows["val"]) else rows["train"][:1]
    val_ds = dataset(x, words_out, val_rows, s["batch_size"], sample_weight=weight)
    identity = {"config": config, "inputs": [i["sha256"] for i in inputs_meta]}
    done = mm.fit(model, lambda first: dataset(x, words_out, rows["train"], s["batch_size"], seed=s["seed"],
                                               sample_weight=weight, epochs=(first, s["epochs"])),
                  val_ds, folder=folder, name="caption", s=s, steps=steps, n_train=len(rows["train"]),
                  monitor="val_loss", mode="min", identity=identity)

    workspace.write_json(folder / VOCAB, vocab.to_json())
    mm.publish(folder, {MODEL: folder / "run" / "best.keras", HISTORY: folder / "run" / "history.csv"})
    summary = {"task": TASK, "folder": str(folder), "head": f"lstm-{td.CAPTION_UNITS}", "context": s["context"],
               "features": ["fc7"] + (["w2v_mean"] if s["context"] == "article" else []),
               "n_train": int(len(rows["train"])), "n_val": int(len(rows["val"])), "vocabulary": len(vocab),
               "val_score": done["val_best"], "best_epoch": done["best_epoch"], "epochs_run": done["epochs_run"],
               "seconds": round(time.monotonic() - t0, 1)}
    workspace.write_json(folder / CONFIG, {**config, "fitted": {"fc7_dim": int(images.fc7.shape[1]),
                                                                   "vocabulary": len(vocab),
                                                                   "word2vec_hits": found, "max_len": max_len,
                                                                   "embedding_dim": int(dim)},
                                              "summary": summary})
    workspace.write_manifest(folder, "train", inputs=inputs_meta, config=config,
                             counts={"train": summary["n_train"], "val": summary["n_val"]},
                             outputs=[MODEL, CONFIG, HISTORY, VOCAB], started=started,
                             extra={"task": TASK})
    return summary


# ------------------------------------------------------------------ baselines

def nearest_captions(train_fc7, train_captions: list[str], query_fc7, block: int = td.RANK_BLOCK) -> list[str]:
    """Nearest-neighbour retrieval: the caption of the training image whose FC7 is closest (cosine
    after centring on the training mean), one block of queries per matrix product."""
    mean = train_fc7.mean(axis=0)

    def unit(a):
        a = a - mean
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    gallery = unit(train_fc7.astype(np.float32))
    out = []
    for lo in range(0, len(query_fc7), block):
        sims = unit(query_fc7[lo:lo + block].astype(np.float32)) @ gallery.T
        out += [train_captions[j] for j in np.argmax(sims, axis=1)]
    return out


def most_frequent_caption(captions: list[str]) -> str:
    """The most frequent training caption (ties: the alphabetically first, for determinism)."""
    counts = Counter(captions)
    return min(counts, key=lambda c: (-counts[c], c))


# ------------------------------------------------------------------ evaluate

def evaluate(ws: Path, *, force: bool = False, beam: int | None = None) -> dict:
    """Caption the test images with the model and the baselines; write and return metrics.json."""
    from newsdl.tasks import metrics as M
    from newsdl.tasks.caption_metrics import caption_scores
    from newsdl.tasks.data import upstream

    ws = Path(ws)
    folder, config = mm.read_saved(ws, TASK, (VOCAB,))
    beam = mm.check_beam(config.get("beam", td.CAPTION_BEAM) if beam is None else beam)
    inputs_meta = upstream(ws)
    key = {"model_sha256": workspace.sha256_file(folder / MODEL), "beam": beam}
    stored = evaluated(folder, inputs_meta, key, force)
    if stored is not None:
        return stored
    t0, started = time.monotonic(), workspace.now()

    from newsdl.tasks import caption_model as cm
    from newsdl.tasks.models import load

    vocab = cm.Vocabulary.load(folder / VOCAB)
    images, tokens, rows = _data(ws, config["seed"])
    test, train = rows["test"], rows["train"]
    if len(test) == 0:
        raise UserError(f"{ws / 'ingest' / 'images.parquet'}: no captioned image in the test split (field "
                        f"'split' of their articles), nothing to evaluate caption on")
    _check_dim(folder, config, images.fc7.shape[1])
    x = _inputs(images, config["context"])
    decoder = cm.Decoder(load(folder / MODEL))
    t1 = time.monotonic()
    ids, _, _ = cm.decode_batches(decoder, x["fc7"][test], x["context"][test] if "context" in x else None,
                                  beam=beam, progress="caption: decoding test images")
    decode_s = time.monotonic() - t1
    text = [" ".join(t) for t in tokens]
    systems = {"model": [vocab.decode(i, unk=False) for i in ids],
               "nearest_neighbour": nearest_captions(images.fc7[train], [text[i] for i in train], images.fc7[test]),
               "most_frequent": [most_frequent_caption([text[i] for i in train])] * len(test)}
    refs = [[text[i]] for i in test]
    scores = caption_scores(refs, systems)
    model_scores = scores.pop("model")
    metrics = {
        "task": TASK,
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "test": model_scores,
        "baselines": scores,
        "main_metric": M.MAIN[TASK][0],
        "beats_every_baseline": all(M.beats(TASK, model_scores, b) for b in scores.values()),
        "model": {"head": f"lstm-{td.CAPTION_UNITS}", "context": config["context"], "beam": beam,
                  "best_epoch": config.get("summary", {}).get("best_epoch"), "n_val": int(len(rows["val"])),
                  "captions_per_s": round(len(test) / max(decode_s, 1e-9), 1)},
        "examples": [{"image_id": str(images.image_id[i]), "reference": text[i], "model": systems["model"][j],
                      "nearest_neighbour": systems["nearest_neighbour"][j]}
                     for j, i in enumerate(test[:td.CAPTION_EXAMPLES])],
    }
    write_evaluation(folder, metrics, [], inputs_meta, key, started, time.monotonic() - t0)
    return metrics


def _check_dim(folder: Path, config: dict, dim: int) -> None:
    want = config.get("fitted", {}).get("fc7_dim")
    if want is not None and int(want) != int(dim):
        raise UserError(f"{folder / CONFIG}: field 'fitted.fc7_dim' is {want}, the workspace's image features "
                        f"have {dim} values; retrain with `newsdl train caption --force`")


# ------------------------------------------------------------------ predict

def predict(ws: Path, input_path: Path, *, out: Path | None = None, images_root: Path | None = None,
            beam: int | None = None) -> dict:
    """Caption every usable image of the articles of INPUT; one JSON record per image."""
    from newsdl.tasks.predict import write_predictions, default_out, predict_summary

    ws, input_path = Path(ws), Path(input_path).expanduser()
    folder, config = mm.read_saved(ws, TASK, (VOCAB,))
    beam = mm.check_beam(config.get("beam", td.CAPTION_BEAM) if beam is None else beam)
    out = Path(out).expanduser() if out else default_out(ws, TASK, input_path)
    if out.suffix not in (".jsonl", ".parquet"):
        raise UserError(f"--out {out}: expected a .jsonl or .parquet file name")
    new, rejects, rejected_file = mm.featurize_new(ws, input_path, images_root, out,
                                                   int(config["fitted"]["fc7_dim"]))
    from newsdl.tasks import caption_model as cm
    from newsdl.tasks.models import load

    vocab = cm.Vocabulary.load(folder / VOCAB)
    records = []
    if len(new.path):
        decoder = cm.Decoder(load(folder / MODEL))
        ctx = new.text["w2v_mean"] if config["context"] == "article" else None
        ids, logprob, length = cm.decode_batches(decoder, new.fc7, ctx, beam=beam, progress="caption: predicting")
        records = [{"id": str(a), "image": p, "caption": vocab.decode(i), "logprob": round(float(lp), 4),
                    "words": int(n)} for a, p, i, lp, n in zip(new.article_id, new.path, ids, logprob, length)]
    else:
        log.warning("%s: no usable image in the input, nothing to caption", input_path)
    write_predictions(out, records)
    return {**predict_summary(out, len(records), rejects, rejected_file), "unit": "images"}
