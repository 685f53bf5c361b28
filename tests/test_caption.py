"""Caption task: vocabulary, the LSTM decoder (training lowers the loss; beam search scores never
worse than greedy, and the scores are the sequences' true log-probabilities), the COCO metrics on
known pairs, and train/evaluate/predict end to end on the small featurized workspace."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from test_tasks_support import (check_resume_keeps_the_count, check_run_folder, copy_workspace,  # noqa: F401
                                featurized_workspace,
                                run_newsdl)

JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not JAVA, reason="the COCO caption metrics run java (CI installs a JRE)")


def test_vocabulary_counts_specials_and_round_trip(tmp_path):
    from newsdl.errors import UserError
    from newsdl.tasks import caption_model as cm

    tokens = [["a", "red", "flag"], ["a", "red", "car"], ["a", "blue", "flag"], ["a", "red", "flag", "in", "x"]]
    vocab = cm.Vocabulary.build(tokens, min_count=2)
    assert vocab.words[:4] == ["<pad>", "<unk>", "<start>", "<end>"]
    assert vocab.words[4:] == ["a", "flag", "red"]  # by count, ties alphabetically; car, blue, in, x are rare
    assert vocab.encode(["a", "blue", "flag"]) == [4, cm.UNK_ID, 5]
    inp, out = cm.sequences([["a", "red"], ["flag", "a", "red", "flag"]], vocab, max_len=3)
    assert inp.tolist() == [[2, 4, 6, 0], [2, 5, 4, 6]]
    assert out.tolist() == [[4, 6, 3, 0], [5, 4, 6, 3]]  # cut at max_len, then <end>
    assert vocab.decode([4, 1, 6, 3, 5]) == "a <unk> red" and vocab.decode([4, 1, 6], unk=False) == "a red"
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(vocab.to_json()))
    assert cm.Vocabulary.load(path).words == vocab.words
    path.write_text(json.dumps({"words": ["a", "b"]}))
    with pytest.raises(UserError, match="vocab.json: field 'words'"):
        cm.Vocabulary.load(path)

    # Word2vec initialisation: caption words with a vector get it (projected to the embedding size
    # by PCA when longer), the others random rows, padding zeros.
    from gensim.models import KeyedVectors

    kv = KeyedVectors(40)
    rng = np.random.default_rng(0)
    kv.add_vectors(["flag", "red", "w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8"], rng.normal(size=(10, 40)))
    mat, found = cm.embedding_init(vocab, kv, 8, seed=1)
    assert mat.shape == (len(vocab), 8) and found == 2 and not mat[cm.PAD_ID].any()
    # The two words keep their relation: their projections differ like the vectors do.
    vecs = kv.vectors.astype(np.float64)
    axes = np.linalg.svd(vecs - vecs.mean(0), full_matrices=False)[2][:8]
    expected = (np.stack([kv["flag"], kv["red"]]) - vecs.mean(0)) @ axes.T
    assert np.corrcoef(mat[5], mat[6])[0, 1] == pytest.approx(np.corrcoef(*expected)[0, 1], abs=1e-4)


@needs_java
def test_metrics_on_known_pairs_give_known_values():
    from newsdl.tasks.caption import caption_scores

    ref = "a man rides a brown horse on the beach"
    hyp = "a man rides a red horse on the beach"
    s = caption_scores([[ref]], {"pair": [hyp], "same": [ref], "empty": [""]})
    # By hand: 8 of 9 unigrams; bigrams 6/8, trigrams 4/7, 4-grams 2/6, equal lengths (no brevity penalty).
    assert s["pair"]["bleu1"] == pytest.approx(8 / 9, abs=1e-6)
    assert s["pair"]["bleu4"] == pytest.approx((8 / 9 * 6 / 8 * 4 / 7 * 2 / 6) ** 0.25, abs=1e-6)
    # ROUGE-L: the longest common subsequence is 8 words of 9 on both sides.
    assert s["pair"]["rouge_l"] == pytest.approx(8 / 9, abs=1e-6)
    # METEOR 1.5 (the jar's English parameters): 8 matches in 2 chunks.
    assert s["pair"]["meteor"] == pytest.approx(0.45919, abs=2e-4)
    assert s["same"]["bleu1"] == pytest.approx(1.0, abs=1e-6) and s["same"]["meteor"] == pytest.approx(1.0)
    assert all(v == 0.0 for v in s["empty"].values())
    # CIDEr-D: identical captions of distinct images score 10 (its x10 scale); a wrong one scores less.
    refs = [["three red flags at a rally"], ["one blue bed outside a hospital"], ["four green graphs on a screen"]]
    c = caption_scores(refs, {"same": [r[0] for r in refs],
                              "swapped": [refs[1][0], refs[0][0], refs[2][0]]})
    assert c["same"]["cider"] == pytest.approx(10.0, abs=1e-6)
    assert c["swapped"]["cider"] == pytest.approx(10.0 / 3, abs=1e-6)  # one image of three right


@needs_java
def test_scores_of_any_subset_of_images_from_per_image_parts():
    """The bootstrap's scores: the whole set gives the corpus scores back (METEOR's mean of
    images only approximates its corpus score), and a subset gives what scoring it alone gives."""
    from newsdl.tasks.caption import caption_score_parts, scores_of_images

    refs = [["a man rides a brown horse on the beach"], ["three red flags at a rally in the rain"],
            ["one blue bed outside a hospital"], ["four green graphs on a big screen"]]
    hyps = ["a man rides a horse on a beach", "red flags at the rally", "a bed outside", "four green graphs"]
    full, parts = caption_score_parts(refs, {"model": hyps})
    again = scores_of_images(parts["model"], np.arange(4))
    for key in ("bleu1", "bleu4", "rouge_l", "cider"):
        assert again[key] == pytest.approx(full["model"][key], abs=1e-9), key
    assert again["meteor"] == pytest.approx(full["model"]["meteor"], abs=0.05)
    alone, _ = caption_score_parts(refs[:2], {"model": hyps[:2]})
    sub = scores_of_images(parts["model"], np.array([0, 1]))
    for key in ("bleu1", "bleu4", "rouge_l"):  # CIDEr's IDF is the whole set's, so it differs
        assert sub[key] == pytest.approx(alone["model"][key], abs=1e-9), key
    # A resample repeats images: BLEU's statistics count the repeat twice.
    twice = scores_of_images(parts["model"], np.array([0, 0, 1]))
    assert twice["bleu1"] != sub["bleu1"]


# ------------------------------------------------------------------ names (issue 14)

def test_names_in_captions_become_placeholders():
    from newsdl.tasks.caption_model import caption_tokens
    from newsdl.tasks.entities import PERSON, PLACE, template_tokens

    # A known city (several words, the sample corpus's shape), a country, a place one comma from
    # its state: one <place> each.
    assert template_tokens("Four white clouds over the coast in Rio de Janeiro") == \
        ["four", "white", "clouds", "over", "the", "coast", "in", PLACE]
    assert template_tokens("One red flag at a rally in France") == \
        ["one", "red", "flag", "at", "a", "rally", "in", PLACE]
    # A person: capitalised words that are no place; a title and a sentence-initial "In" are not part of it.
    assert template_tokens("Barack Obama speaks at a rally in Paris, Texas") == \
        [PERSON, "speaks", "at", "a", "rally", "in", PLACE]
    assert template_tokens("In Kabul, President Hamid Karzai meets John Kerry") == \
        ["in", PLACE, "president", PERSON, "meets", PERSON]
    # No name: the caption's words as before.
    plain = "Two blue beds outside a hospital in the capital"
    assert template_tokens(plain) == caption_tokens(plain)


ARTICLE = ("President Barack Obama flew to Paris on Monday. Obama met French leaders in Paris, where "
           "Angela Merkel joined him. Later in Lyon, Obama said Paris had been a fine host.")


def test_placeholders_are_filled_from_the_article():
    from newsdl.tasks.entities import PERSON, PLACE, article_names, fill

    names = article_names(ARTICLE, title="Obama in Paris")
    # Paris 4 times, Lyon once; France (from "French") after; "Obama" (a town in Japan too) is the person.
    assert names[PLACE][:2] == ["Paris", "Lyon"] and "Obama" not in names[PLACE]
    # Barack Obama once in full plus four times by surname, Angela Merkel once.
    assert names[PERSON] == ["Barack Obama", "Angela Merkel"]
    assert fill("<person> speaks at a rally in <place>", names) == "Barack Obama speaks at a rally in Paris"
    # The k-th placeholder of a type takes the article's k-th name; a repeated one is one name.
    assert fill("<person> and <person> meet in <place> <place>", names) == \
        "Barack Obama and Angela Merkel meet in Paris"


def test_a_placeholder_with_nothing_to_fill_leaves_nothing_dangling():
    from newsdl.tasks.entities import PERSON, PLACE, article_names, fill, tidy

    none = article_names("the minister said nothing new on tuesday.", title="")
    assert none == {PLACE: [], PERSON: []}
    assert fill("four white clouds over the coast in <place>", none) == "four white clouds over the coast"
    assert fill("four white clouds over the coast in <place>", None) == "four white clouds over the coast"
    assert fill("<person> and <person> at a rally in <place>", {PERSON: ["Ann Lee"]}) == "Ann Lee at a rally"
    assert fill("<person> speaks", {}) == "speaks"
    # <unk> (from a model or a vocabulary of before) goes with its preposition, never shown.
    assert tidy("four white clouds over the coast in <unk>".split()) == "four white clouds over the coast"
    assert tidy("clouds in <unk> near the coast".split()) == "clouds near the coast"


def _toy(n=240, seed=0):
    """Images in 4 clusters of 16-d features, each cluster with its caption (2 words vary)."""
    from newsdl.tasks import caption_model as cm

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (4, 16))
    cluster = rng.integers(0, 4, n)
    fc7 = (centres[cluster] + 0.3 * rng.normal(0, 1, (n, 16))).astype(np.float32)
    objects = ["flags", "beds", "graphs", "tents"]
    colours = ["red", "blue", "green"]
    tokens = [["three", colours[rng.integers(0, 3)], objects[c], "in", "the", "city"] for c in cluster]
    vocab = cm.Vocabulary.build(tokens, min_count=1)
    inp, out = cm.sequences(tokens, vocab, max_len=8)
    return fc7, vocab, inp, out


@pytest.mark.slow
def test_training_lowers_loss_and_beam_is_never_worse_than_greedy():
    import keras

    from newsdl import defaults as td
    from newsdl.tasks import caption_model as cm

    keras.utils.set_random_seed(3)
    fc7, vocab, inp, out = _toy()
    emb, _ = cm.embedding_init(vocab, None, 32, seed=3)
    model = cm.build(len(vocab), fc7, None, embedding=emb, units=64, max_len=8)
    assert list(model.output) == ["words"]  # the model's outputs are named, as every task's
    # The task's loop trains it in newsdl; here Keras's fit does, on the same masked cross-entropy.
    model.compile(optimizer=keras.optimizers.Adam(3e-3, clipnorm=td.CAPTION_CLIPNORM),
                  loss={"words": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
                  weighted_metrics=[], jit_compile=False)
    weight = {"words": (out != cm.PAD_ID).astype(np.float32)}  # padding masked out
    x, y = {"fc7": fc7, "words": inp}, {"words": out}
    before = model.evaluate(x, y, sample_weight=weight, verbose=0)
    hist = model.fit(x, y, sample_weight=weight, batch_size=32, epochs=3, verbose=0)
    losses = hist.history["loss"]
    after = model.evaluate(x, y, sample_weight=weight, verbose=0)
    assert losses[-1] < losses[0] and after < 0.7 * before, (before, losses, after)

    dec = cm.Decoder(model)
    assert dec.max_len == 8 and not dec.has_context
    g_ids, g_lp, g_len = dec.greedy(fc7[:40])
    for alpha in (0.0, 0.7):
        b_ids, b_lp, b_len = dec.beam(fc7[:40], beam=3, alpha=alpha)
        # The scores are the sequences' log-probabilities, recomputed independently by teacher forcing.
        np.testing.assert_allclose(_sequence_logprob(dec, fc7[:40], b_ids), b_lp, atol=1e-4)
        np.testing.assert_allclose(_sequence_logprob(dec, fc7[:40], g_ids), g_lp, atol=1e-4)
        assert np.all(b_lp / np.maximum(b_len, 1) ** alpha >= g_lp / np.maximum(g_len, 1) ** alpha - 1e-6)
    b1 = dec.beam(fc7[:40], beam=1)
    np.testing.assert_array_equal(b1[0], g_ids)
    # The trained decoder names the cluster's object: the image drives the caption.
    words = [vocab.decode(i).split() for i in g_ids]
    assert all(len(w) >= 3 for w in words) and len({w[2] for w in words}) >= 3

    # A banned word is never chosen (the caption decoders ban <unk> so): "city" ends every toy
    # caption, so without the ban it is emitted; with it, never, and the scores stay true log-probabilities.
    city = vocab.index["city"]
    free = cm.Decoder(model, ban=())
    assert (free.greedy(fc7[:40])[0] == city).any()
    banned = cm.Decoder(model, ban=(cm.PAD_ID, cm.UNK_ID, cm.START_ID, city))
    for ids, lp, _ in (banned.greedy(fc7[:40]), banned.beam(fc7[:40], beam=3)):
        assert not (ids == city).any() and not (ids == cm.UNK_ID).any()
        np.testing.assert_allclose(_sequence_logprob(banned, fc7[:40], ids), lp, atol=1e-4)
    assert np.isneginf(dec.ban[[cm.UNK_ID, cm.PAD_ID, cm.START_ID]]).all() and dec.ban[cm.END_ID] == 0


@pytest.fixture(scope="module")
def caption_workspace(featurized_workspace, tmp_path_factory):  # noqa: F811
    from newsdl.tasks import evaluate_task, train_task

    ws = copy_workspace(featurized_workspace, tmp_path_factory.mktemp("caption") / "ws")
    summary = train_task(ws, "caption", epochs=2, batch_size=16, seed=7)
    metrics = evaluate_task(ws, "caption") if JAVA else None
    return ws, summary, metrics


@pytest.mark.slow
@needs_java
def test_caption_end_to_end(caption_workspace, sample_corpus, tmp_path):
    from newsdl.tasks import evaluate_task, format_table, get, predict_task, train_task

    ws, summary, metrics = caption_workspace
    task = get("caption")
    folder = ws / "models" / "caption"
    for name in ("model.keras", "vocab.json", "config.json", "history.csv", "metrics.json", "manifest.json"):
        assert (folder / name).is_file(), name
    assert summary["n_train"] > 0 and summary["epochs_run"] <= 2 and summary["context"] == "article"
    assert summary["head"] == "lstm-256" and summary["monitor"] == "val_loss" and summary["vocabulary"] > 4
    assert summary["features"] == ["fc7", "w2v_mean"] and 0 <= summary["best_epoch"] <= summary["epochs_run"]
    config = check_run_folder(folder, "lstm-256")
    assert config["heads"]["lstm-256"]["val_best"] == summary["val_best"]
    model = task.load_model(folder / "model.keras")
    assert list(model.output) == ["words"]
    assert metrics["task"] == "caption" and metrics["n_test"] > 0 and metrics["n_train"] == summary["n_train"]
    assert list(metrics["test"]) == list(task.metric_keys)
    assert set(metrics["baselines"]) == {"nearest_neighbour", "most_frequent"}
    for scores in [metrics["test"], *metrics["baselines"].values()]:
        assert list(scores) == list(task.metric_keys)
        assert all(isinstance(v, float) and np.isfinite(v) and v >= 0 for v in scores.values())
    assert metrics["main_metric"] == "cider" and metrics["model"]["beam"] == 3
    assert "cider*" in format_table(metrics)
    # Paired bootstrap intervals against each baseline, on every metric (per-image parts).
    assert set(metrics["vs_baselines"]) == set(metrics["baselines"])
    for name, vs in metrics["vs_baselines"].items():
        assert list(vs) == list(task.metric_keys)
        for k, d in vs.items():
            assert d["diff"] == pytest.approx(metrics["test"][k] - metrics["baselines"][name][k])
            assert d["ci95"][0] <= d["ci95"][1]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {"model.keras", "vocab.json"} <= set(manifest["outputs"])
    record = json.loads((folder / "evaluate.json").read_text())
    assert record["outputs"].keys() == {"metrics.json", "captions.png"} and record["config"]["beam"] == 3
    # Names (issue 14): trained on templates; test scores the filled captions, "unfilled" the same
    # captions without filling, "filling" the paired difference with its interval.
    assert config["model"]["placeholders"] is True and metrics["model"]["placeholders"] is True
    assert "<place>" in json.loads((folder / "vocab.json").read_text())["words"]
    assert list(metrics["unfilled"]) == list(task.metric_keys)
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics["unfilled"].values())
    for k, d in metrics["filling"].items():
        assert d["diff"] == pytest.approx(metrics["test"][k] - metrics["unfilled"][k])
        assert d["ci95"][0] <= d["ci95"][1]
    assert metrics["model"]["captions_with_placeholders"] > 0
    assert metrics["filling"]["cider"]["diff"] > 0  # the sample captions end in their article's place
    for ex in metrics["examples"]:  # the template: the decoded words as they are, placeholders kept
        assert "<unk>" not in ex["template"] and "<" not in ex["model"], ex
        assert not ex["model"] or ex["model"].split()[-1] not in ("in", "at", "on", "over", "near"), ex
    png = folder / "captions.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Reruns are no-ops; another beam width is another evaluation.
    assert train_task(ws, "caption", epochs=2, batch_size=16, seed=7)["skipped"] is True
    assert evaluate_task(ws, "caption") == metrics
    greedy = evaluate_task(ws, "caption", beam=1)
    assert greedy["model"]["beam"] == 1 and greedy["baselines"] == metrics["baselines"]

    out = tmp_path / "captions.jsonl"
    r = predict_task(ws, "caption", sample_corpus / "articles.jsonl", out=out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert r["predicted"] == len(rows) > 0
    assert all(isinstance(x["caption"], str) and x["image"] and x["logprob"] <= 0 for x in rows)
    # Never <unk> nor a placeholder nor a dangling preposition in what predict shows; the template beside it.
    for x in rows:
        assert "<" not in x["caption"] and "<unk>" not in x["template"], x
        assert not x["caption"] or x["caption"].split()[-1] not in ("in", "at", "on", "over", "near"), x
    assert any("<place>" in x["template"] for x in rows)
    assert sum(x["caption"] != x["template"] for x in rows) > 0


@pytest.mark.slow
def test_caption_cli_user_errors(caption_workspace):
    ws = caption_workspace[0]
    for args, expected in ((("train", "caption", "--context", "pixels"), "--context pixels"),
                           (("evaluate", "caption", "--beam", "0"), "--beam 0"),
                           (("train", "illustrate", "--beam", "2"), "--beam 2: illustrate has no such option"),
                           (("train", "caption", "--head", "cells"), "--head cells: caption has no such option"),
                           (("train", "caption", "--features", "bow"),
                            "--features bow: caption always reads the image's FC7")):
        r = run_newsdl(*args, "-w", ws)
        assert r.returncode == 2, r.stderr
        assert expected in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_resumed_caption_run_keeps_its_early_stopping_count(featurized_workspace, tmp_path):  # noqa: F811
    """Kill caption training once the epoch before early stopping ends it is checkpointed (its
    patience count then 1 of 2): the resumed run trains one epoch and stops, as the uninterrupted
    run did, instead of counting patience from zero; same history, best epoch and weights."""
    summary = check_resume_keeps_the_count(
        featurized_workspace, tmp_path, "caption",
        ["--epochs", "12", "--patience", "2", "--batch-size", "16", "--seed", "3", "--lr", "0.01"])
    assert summary["head"] == "lstm-256" and summary["monitor"] == "val_loss"


def _sequence_logprob(dec, fc7, ids) -> np.ndarray:
    """Log-probability of given word sequences (up to and including <end>), by teacher forcing one
    step at a time: an independent check on the decoders' scores."""
    from newsdl.tasks.caption_model import END_ID, PAD_ID, START_ID

    h, c = dec.encode(fc7)
    n, steps = ids.shape
    total, live, word = np.zeros(n), np.ones(n, bool), np.full(n, START_ID, np.int32)
    for t in range(steps):
        logp, h, c = dec.step(word, h, c)
        nxt = ids[:, t]
        live &= nxt != PAD_ID
        total[live] += logp[np.arange(n), nxt][live]
        live &= nxt != END_ID
        word = np.where(nxt == PAD_ID, END_ID, nxt).astype(np.int32)
    return total
