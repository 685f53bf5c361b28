"""caption: generate an image's caption from its FC7 (and, with ``--context article``, its
article's word2vec mean) with a Show-and-Tell LSTM decoder (caption_model.py).

Names (issue 14, entities.py): the decoder is trained on caption templates, each place and
person name of a training caption replaced by <place> or <person>, and each placeholder it emits
is filled with the name of that type the image's article mentions most (the second placeholder of
a type with the second, ...); one with nothing to fill is dropped with its preposition. The
decoders never emit <unk>. metrics.json's `test` scores the filled captions, `unfilled` the same
captions with every placeholder dropped, and `filling` the difference with its interval.

Files beside the model: vocab.json, the caption vocabulary (<pad>, <unk>, <start>, <end>, then
words by frequency, the placeholders among them). The loss is each caption's mean cross-entropy
over its words (teacher forcing; padding masked out). Captions are compared as the suite's tokenizer writes them (lower
case, digits as '#'), for the model and the baselines alike, then through pycocoevalcap's PTB
tokenizer and scorers.
"""

from __future__ import annotations

import math
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

from newsdl import defaults as td
from newsdl.errors import UserError
from newsdl.progress import fd2_hidden
from newsdl.tasks import entities as E
from newsdl.tasks import multimodal as mm
from newsdl.tasks.layout import MODEL, VOCAB
from newsdl.tasks.metrics import paired_bootstrap
from newsdl.tasks.plots import caption_grid
from newsdl.tasks.task import Data, split_rows

log = logging.getLogger("newsdl.tasks")


class Caption(mm.ImageTask):
    name = "caption"
    epochs, batch_size, clipnorm = td.CAPTION_EPOCHS, td.CAPTION_BATCH, td.CAPTION_CLIPNORM
    options = {"context": td.CAPTION_CONTEXT, "beam": td.CAPTION_BEAM}
    eval_options = ("beam",)
    files = (VOCAB,)
    metric_keys = ("bleu1", "bleu4", "meteor", "rouge_l", "cider")
    main_metric, higher_is_better = "cider", True

    def check_option(self, name, value):
        if name == "context" and value not in ("none", "article"):
            raise UserError(f"--context {value}: choose none or article")
        if name == "beam" and not 1 <= int(value) <= 50:
            raise UserError(f"--beam {value}: must be between 1 (greedy) and 50")
        return int(value) if name == "beam" else str(value)

    def model_config(self):
        return {"model": {"units": td.CAPTION_UNITS, "embed": td.CAPTION_EMBED, "dropout": td.CAPTION_DROPOUT,
                          "l2": td.CAPTION_L2, "max_len": td.CAPTION_MAX_LEN, "min_count": td.CAPTION_MIN_COUNT,
                          "vocab_max": td.CAPTION_VOCAB_MAX, "length_alpha": td.CAPTION_LENGTH_ALPHA,
                          "placeholders": td.CAPTION_PLACEHOLDERS}}

    def heads(self, s):
        return [f"lstm-{td.CAPTION_UNITS}"]

    def load(self, ws, s):
        from newsdl.tasks import caption_model as cm

        images, tokens, rows = _data(ws, s["seed"])
        if td.CAPTION_PLACEHOLDERS:
            from newsdl.tasks.entities import PLACEHOLDERS, template_tokens

            # The decoder learns where a name goes; which name, the article tells at decode time.
            tokens = [template_tokens(c) if len(t) else t for c, t in zip(images.caption, tokens)]
            named = sum(any(w in PLACEHOLDERS for w in tokens[i]) for i in rows["train"])
            log.info("caption: %d of %d training captions name a place or person (placeholders)",
                     named, len(rows["train"]))
        vocab = cm.Vocabulary.build([tokens[i] for i in rows["train"]])
        # Sequences as long as the longest training caption (at most CAPTION_MAX_LEN): an LSTM step
        # costs the same on padding, and short news-caption corpora would pay for 30 steps otherwise.
        max_len = min(td.CAPTION_MAX_LEN, max(len(tokens[i]) for i in rows["train"]))
        words_in, words_out = cm.sequences(tokens, vocab, max_len)
        kv = None
        if (ws / "features" / "word2vec.kv").is_file():
            from newsdl.features.vectors import read_vectors

            kv = read_vectors(ws / "features" / "word2vec.kv")
        dim = td.CAPTION_EMBED if kv is None else min(td.CAPTION_EMBED, kv.vector_size)
        embedding, found = cm.embedding_init(vocab, kv, dim, s["seed"])
        log.info("caption: vocabulary %d words (%d from word2vec); context %s", len(vocab), found, s["context"])
        x = {**_inputs(images, s["context"]), "words": words_in}
        return Data(x, {"words": words_out}, rows, fitted={"vocab": vocab, "embedding": embedding, "max_len": max_len},
                    record={"fc7_dim": int(images.fc7.shape[1]), "vocabulary": len(vocab), "word2vec_hits": found,
                            "max_len": max_len, "embedding_dim": int(dim)},
                    summary={"context": s["context"], "vocabulary": len(vocab),
                             "placeholders": bool(td.CAPTION_PLACEHOLDERS),
                             "features": ["fc7"] + (["w2v_mean"] if s["context"] == "article" else [])})

    def build(self, data, s, head):
        from newsdl.tasks import caption_model as cm

        tr = data.rows["train"]
        return cm.build(len(data.fitted["vocab"]), data.x["fc7"][tr],
                        data.x["context"][tr] if "context" in data.x else None,
                        embedding=data.fitted["embedding"], max_len=data.fitted["max_len"])

    def losses(self, y, pred, batch):
        import keras
        import tensorflow as tf

        from newsdl.tasks.caption_model import PAD_ID

        ce = keras.losses.sparse_categorical_crossentropy(y["words"], pred["words"], from_logits=True)
        mask = tf.cast(tf.not_equal(y["words"], PAD_ID), tf.float32)
        return {"loss": tf.reduce_sum(ce * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)}

    def save(self, folder, data):
        from newsdl.workspace import write_json

        write_json(folder / VOCAB, data.fitted["vocab"].to_json())
        return [VOCAB]

    def restore(self, folder, config, ws):
        from newsdl.tasks.caption_model import Vocabulary

        return {**config.get("fitted", {}), "vocab": Vocabulary.load(folder / VOCAB)}

    def evaluate(self, ws, saved, beam):
        """Caption the test images with the model and the baselines."""
        from newsdl.tasks import caption_model as cm

        vocab = saved.fitted["vocab"]
        images, tokens, rows = _data(ws, saved.config["seed"], saved.fitted)
        test, train = rows["test"], rows["train"]
        if len(test) == 0:
            raise UserError(f"{ws / 'ingest' / 'images.parquet'}: no captioned image in the test split (field "
                            f"'split' of their articles), nothing to evaluate caption on")
        x = _inputs(images, saved.config["context"])
        decoder = cm.Decoder(self.load_model(saved.folder / MODEL))
        t1 = time.monotonic()
        ids, _, _ = cm.decode_batches(decoder, x["fc7"][test], x["context"][test] if "context" in x else None,
                                      beam=beam, progress="caption: decoding test images")
        decode_s = time.monotonic() - t1
        text = [" ".join(t) for t in tokens]
        templates = [vocab.decode(i, unk=False) for i in ids]
        names = _article_names(ws, images.article_id[test])
        filled = [E.scored(E.fill(t, names[a])) for t, a in zip(templates, images.article_id[test])]
        systems = {"model": filled, "unfilled": [E.fill(t, None) for t in templates],
                   "nearest_neighbour": nearest_captions(images.fc7[train], [text[i] for i in train],
                                                         images.fc7[test]),
                   "most_frequent": [most_frequent_caption([text[i] for i in train])] * len(test)}
        scores, parts = caption_score_parts([[text[i]] for i in test], systems)
        # Without filling: the same decoded captions, every placeholder dropped as if the article
        # named nothing. Not a baseline (it is the model); reported beside it with the paired gain.
        unfilled, unfilled_part = scores.pop("unfilled"), parts.pop("unfilled")
        filling = paired_bootstrap(lambda idx: {"model": scores_of_images(parts["model"], idx),
                                                "unfilled": scores_of_images(unfilled_part, idx)},
                                   {"model": scores["model"], "unfilled": unfilled}, len(test), self.metric_keys,
                                   int(saved.config["seed"]))["unfilled"]
        emitted = [sum(w in E.PLACEHOLDERS for w in t.split()) for t in templates]
        result = {"n_train": len(train), "n_test": len(test), "n_val": len(rows["val"]),
                  "scores": scores,
                  "resample": lambda idx: {name: scores_of_images(part, idx) for name, part in parts.items()},
                  "model": {"context": saved.config["context"], "placeholders": _placeholders(saved),
                            "captions_with_placeholders": int(sum(e > 0 for e in emitted)),
                            "captions_per_s": round(len(test) / max(decode_s, 1e-9), 1)},
                  "unfilled": unfilled, "filling": filling,
                  "examples": [{"image_id": str(images.image_id[i]), "reference": text[i], "model": filled[j],
                                "template": templates[j], "nearest_neighbour": systems["nearest_neighbour"][j]}
                               for j, i in enumerate(test[:td.CAPTION_EXAMPLES])]}
        shown = test[:td.CAPTION_GRID]
        grid = caption_grid(saved.folder / "captions.png", _image_files(ws, images.image_id[shown]),
                            filled[:len(shown)], [text[i] for i in shown],
                            title=f"caption: {len(shown)} of {len(test)} test images (generated / true)")
        return result, [grid]

    def predict(self, ws, saved, table, root, source, beam):
        """Caption every usable image of the articles; one record per image."""
        from newsdl.tasks import caption_model as cm

        new, rejects = mm.featurize_new(ws, table, root, source, int(saved.config["fitted"]["fc7_dim"]))
        vocab, records = saved.fitted["vocab"], []
        if len(new.path):
            decoder = cm.Decoder(self.load_model(saved.folder / MODEL))
            ctx = new.text["w2v_mean"] if saved.config["context"] == "article" else None
            ids, logprob, length = cm.decode_batches(decoder, new.fc7, ctx, beam=beam, progress="caption: predicting")
            texts = dict(zip(map(str, table.column("id").to_pylist()),
                             zip(table.column("text").to_pylist(), table.column("title").to_pylist())))
            names = {a: E.article_names(*texts[a]) for a in dict.fromkeys(map(str, new.article_id))}
            templates = [vocab.decode(i, unk=False) for i in ids]
            records = [{"id": str(a), "image": p, "caption": E.fill(t, names[str(a)]), "template": t,
                        "logprob": round(float(lp), 4), "words": int(n)}
                       for a, p, t, lp, n in zip(new.article_id, new.path, templates, logprob, length)]
        else:
            log.warning("%s: no usable image in the input, nothing to caption", source)
        return records, rejects, (len(records), "images")


def _data(ws: Path, seed: int, fitted: dict | None = None):
    """Images with a caption, their tokens, and the rows of each split."""
    from newsdl.tasks.caption_model import caption_tokens

    images = mm.load_images(ws, fitted)
    tokens = [caption_tokens(c) for c in images.caption]
    has = np.array([len(t) > 0 for t in tokens], bool)
    return images, tokens, split_rows(images.split, has, seed, groups=images.article_id, unit="images")


def _placeholders(saved) -> bool:
    """Whether the model was trained on templates (models before issue 14 were not)."""
    return bool(saved.config.get("model", {}).get("placeholders", False))


def _article_names(ws: Path, article_ids) -> dict[str, dict[str, list[str]]]:
    """The names each of these articles gives (entities.article_names), from ingest's text."""
    import pyarrow.parquet as pq

    wanted = set(map(str, article_ids))
    table = pq.read_table(ws / "ingest" / "articles.parquet", columns=["id", "title", "text"])
    out = {}
    for aid, title, text in zip(*(table.column(c).to_pylist() for c in ("id", "title", "text"))):
        if str(aid) in wanted:
            out[str(aid)] = E.article_names(text, title)
    return {a: out.get(a, {}) for a in wanted}


def _image_files(ws: Path, image_ids) -> list:
    """Each image as a small RGB array for a figure, None where its file can't be read now (moved
    since ingest, or refused by ingest's checks: outside the images root, too many pixels)."""
    import io

    from PIL import Image

    from newsdl.features.run import read_ingest
    from newsdl.ingest.images import read_image, safe_resolve

    root = read_ingest(ws).images_root
    path_of = mm.image_paths(ws)
    out = []
    for image_id in map(str, image_ids):
        try:
            data = read_image(safe_resolve(root, path_of[image_id]))  # checked: size limits, no bomb
            with Image.open(io.BytesIO(data)) as img:
                img.thumbnail((td.CAPTION_GRID_PIXELS, td.CAPTION_GRID_PIXELS))
                out.append(np.asarray(img.convert("RGB")))
        except Exception as exc:  # noqa: BLE001 - a figure must not fail evaluate
            log.warning("captions.png: image %s not shown (%s)", image_id, exc)
            out.append(None)
    return out


def _inputs(images, context: str) -> dict:
    x = {"fc7": images.fc7}
    if context == "article":
        x["context"] = images.text["w2v_mean"]
    return x


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


# ------------------------------------------------------------------ metrics
# pycocoevalcap's BLEU-1, BLEU-4, METEOR, ROUGE-L and CIDEr(-D) after the Stanford PTB tokenizer.
# The tokenizer and METEOR run `java`: every system is scored in one call, so the JVMs start once.

def _check_java() -> None:
    if shutil.which("java") is None:
        raise UserError("java: not found on PATH; the caption metrics (pycocoevalcap's PTB tokenizer and METEOR) "
                        "need a Java runtime, e.g. `apt-get install default-jre-headless`")


def caption_scores(references: list[list[str]], systems: dict[str, list[str]]) -> dict[str, dict]:
    """``references[i]``: the reference captions of image i; ``systems[name][i]``: that system's
    caption of image i. Returns {name: {bleu1, bleu4, meteor, rouge_l, cider}} (corpus-level)."""
    return caption_score_parts(references, systems)[0]


def caption_score_parts(references: list[list[str]], systems: dict[str, list[str]]) -> tuple[dict, dict]:
    """caption_scores, and each system's per-image parts for scoring any subset of the images
    (scores_of_images): BLEU's n-gram statistics (its corpus score is a function of their sums),
    and the per-image METEOR, ROUGE-L and CIDEr (CIDEr's IDF being the whole test set's)."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError:  # pragma: no cover - a dependency of the package
        raise UserError("pycocoevalcap is not installed: pip install pycocoevalcap") from None
    _check_java()
    n = len(references)
    if n == 0:
        raise ValueError("no caption to score")
    for name, caps in systems.items():
        if len(caps) != n:
            raise ValueError(f"{name}: {len(caps)} captions for {n} images")
    # One tokenizer run for everything: keys "r/i" for references, "name/i" for each system.
    raw = {f"r/{i}": [{"caption": c or ""} for c in refs] for i, refs in enumerate(references)}
    for name, caps in systems.items():
        raw.update({f"s{name}/{i}": [{"caption": c or ""}] for i, c in enumerate(caps)})
    # Its java child prints "PTBTokenizer tokenized ..." to the fd 2 it inherits; --verbose shows it.
    with fd2_hidden(not log.isEnabledFor(logging.DEBUG)):
        tok = PTBTokenizer().tokenize(raw)
    gts = {i: tok[f"r/{i}"] for i in range(n)}
    meteor = Meteor()
    out, parts = {}, {}
    try:
        for name in systems:
            # An empty hypothesis would make METEOR's jar fail; a single space scores 0 as it should.
            res = {i: [tok[f"s{name}/{i}"][0] or " "] for i in range(n)}
            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            m_score, m_each = meteor.compute_score(gts, res)
            r_score, r_each = Rouge().compute_score(gts, res)
            c_score, c_each = Cider().compute_score(gts, res)
            out[name] = {"bleu1": float(bleu[0]), "bleu4": float(bleu[3]), "meteor": float(m_score),
                         "rouge_l": float(r_score), "cider": float(c_score)}
            parts[name] = {"bleu": bleu_statistics(gts, res), "meteor": np.asarray(m_each, float),
                           "rouge_l": np.asarray(r_each, float), "cider": np.asarray(c_each, float)}
    finally:
        _close(meteor)
    return out, parts


def bleu_statistics(gts: dict, res: dict) -> np.ndarray:
    """[images, 10]: each image's hypothesis length, closest reference length, then its n-gram
    guesses and matches for n = 1..4, counted by pycocoevalcap's own BleuScorer."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    scorer = BleuScorer(n=4)
    for i in sorted(gts):
        scorer += (res[i][0], gts[i])
    rows = []
    for comps in scorer.ctest:
        testlen = comps["testlen"]
        reflen = min((abs(length - testlen), length) for length in comps["reflen"])[1]  # "closest", as Bleu()
        rows.append([testlen, reflen, *comps["guess"], *comps["correct"]])
    return np.asarray(rows, float).reshape(-1, 10)


def corpus_bleu(stats: np.ndarray) -> list[float]:
    """BLEU-1..4 of a set of images from their summed statistics (pycocoevalcap's formula)."""
    tiny, small = 1e-15, 1e-9
    total = stats.sum(axis=0)
    bleus, product = [], 1.0
    for k in range(4):
        product *= (total[6 + k] + tiny) / (total[2 + k] + small)
        bleus.append(product ** (1.0 / (k + 1)))
    ratio = (total[0] + tiny) / (total[1] + small)
    return [b * math.exp(1 - 1 / ratio) for b in bleus] if ratio < 1 else bleus


def scores_of_images(part: dict, rows: np.ndarray) -> dict[str, float]:
    """One system's scores on the images ``rows`` (repeats allowed: a bootstrap resample). BLEU
    and ROUGE-L and CIDEr are exact; METEOR is the mean of the images' scores, which its
    corpus-level score (fragmentation over the whole set) only approximates."""
    bleu = corpus_bleu(part["bleu"][rows])
    return {"bleu1": bleu[0], "bleu4": bleu[3], "meteor": float(part["meteor"][rows].mean()),
            "rouge_l": float(part["rouge_l"][rows].mean()), "cider": float(part["cider"][rows].mean())}


def _close(meteor) -> None:
    """Stop METEOR's JVM now rather than at garbage collection."""
    proc = getattr(meteor, "meteor_p", None)
    if proc is not None and proc.poll() is None:
        try:
            proc.stdin.close()
        except OSError:
            pass
        proc.kill()
        proc.wait()


TASK = Caption()
