"""The caption model: a Show-and-Tell LSTM decoder (Vinyals et al., 2015), its vocabulary and its
decoders (greedy and batched beam search).

Model: the image's FC7 (standardised, with dropout) and, with ``context="article"``, the article's
word2vec mean go through one dense layer to a conditioning vector, from which two dense layers
give the LSTM's initial hidden and cell states (the image "initialises the state"). Words enter
through an embedding (initialised from the workspace's word2vec where a caption word has a vector),
then the LSTM, dropout and a softmax over the vocabulary. Training is teacher forcing: the input
is <start> w1 .. wn, the target w1 .. wn <end>, the padding masked out of the loss.

Decoding uses the same layers, one step at a time: an encoder model (features -> h0, c0) and a
step model (word, h, c -> log-probabilities, h', c'), both built from the trained model's layers,
so nothing but the one .keras file is saved.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from newsdl import defaults as td  # noqa: E402

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
PAD_ID, UNK_ID, START_ID, END_ID = 0, 1, 2, 3
SPECIALS = (PAD, UNK, START, END)


def caption_tokens(caption: str) -> list[str]:
    """A caption's words: the suite's one tokenizer (lower case, digits as '#')."""
    from newsdl.features.tokenize import tokenize

    return tokenize(caption)


class Vocabulary:
    """Caption words seen at least ``min_count`` times in training captions, after the specials."""

    def __init__(self, words: list[str]):
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, token_lists, min_count: int = td.CAPTION_MIN_COUNT, max_size: int = td.CAPTION_VOCAB_MAX):
        counts = Counter(t for tokens in token_lists for t in tokens)
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))[:max_size]
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.index.get(t, UNK_ID) for t in tokens]

    def decode(self, ids, unk: bool = True) -> str:
        """Word ids to text; stops at <end>, skips the other specials (and <unk> unless ``unk``)."""
        out = []
        for i in ids:
            i = int(i)
            if i == END_ID:
                break
            if i >= len(SPECIALS):
                out.append(self.words[i])
            elif i == UNK_ID and unk:
                out.append(UNK)
        return " ".join(out)

    def to_json(self) -> dict:
        return {"words": self.words, "specials": list(SPECIALS)}

    @classmethod
    def from_json(cls, obj: dict, path: Path | str = "vocab.json") -> "Vocabulary":
        from newsdl.errors import UserError

        words = obj.get("words") if isinstance(obj, dict) else None
        if not isinstance(words, list) or list(words[:len(SPECIALS)]) != list(SPECIALS) \
                or not all(isinstance(w, str) for w in words):
            raise UserError(f"{path}: field 'words' is not a caption vocabulary; retrain with "
                            f"`newsdl train caption --force`")
        return cls(words)

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")), path)


def sequences(token_lists, vocab: Vocabulary, max_len: int = td.CAPTION_MAX_LEN):
    """Teacher-forcing arrays: inputs <start> w1..wn and targets w1..wn <end>, padded to max_len + 1."""
    n = len(token_lists)
    inp = np.full((n, max_len + 1), PAD_ID, np.int32)
    out = np.full((n, max_len + 1), PAD_ID, np.int32)
    for i, tokens in enumerate(token_lists):
        ids = vocab.encode(tokens[:max_len])
        inp[i, 0] = START_ID
        inp[i, 1:len(ids) + 1] = ids
        out[i, :len(ids)] = ids
        out[i, len(ids)] = END_ID
    return inp, out


def embedding_init(vocab: Vocabulary, kv, dim: int, seed: int) -> tuple[np.ndarray, int]:
    """Initial word embedding: the word2vec vector where a caption word has one (projected on the
    vectors' first ``dim`` principal axes when they are longer, and rescaled to the random rows'
    norm), small random vectors elsewhere. Returns (matrix, words found)."""
    rng = np.random.default_rng(seed)
    mat = rng.normal(0.0, 0.05, (len(vocab), dim)).astype(np.float32)
    mat[PAD_ID] = 0.0
    found = 0
    if kv is not None:
        hits = [(i, w) for i, w in enumerate(vocab.words) if i >= len(SPECIALS) and w in kv.key_to_index]
        if hits:
            vecs = np.stack([kv[w] for _, w in hits]).astype(np.float32)
            if vecs.shape[1] > dim:
                from newsdl.tasks.data import pca_axes

                mean, axes = pca_axes(kv.vectors, dim, rows=td.CAPTION_PCA_WORDS)
                vecs = ((vecs - mean) @ axes.T).astype(np.float32)
                if vecs.shape[1] < dim:
                    vecs = np.hstack([vecs, np.zeros((len(vecs), dim - vecs.shape[1]), np.float32)])
            scale = 0.05 * np.sqrt(dim) / max(float(np.mean(np.linalg.norm(vecs, axis=1))), 1e-6)
            mat[[i for i, _ in hits]] = vecs * scale
            found = len(hits)
    return mat, found


def build(vocab_size: int, fc7_train: np.ndarray, context_train: np.ndarray | None, *, embedding: np.ndarray,
          units: int = td.CAPTION_UNITS, dropout: float = td.CAPTION_DROPOUT, l2: float = td.CAPTION_L2,
          max_len: int = td.CAPTION_MAX_LEN):
    """The teacher-forcing model: inputs fc7, [context], words -> {"words": logits [batch, max_len + 1,
    vocab]}."""
    import keras
    from keras import layers

    from newsdl.tasks.models import normalizer

    reg = keras.regularizers.L2(l2)
    fc7 = keras.Input((fc7_train.shape[1],), name="fc7")
    words = keras.Input((max_len + 1,), dtype="int32", name="words")
    inputs = [fc7]
    parts = [layers.Dropout(dropout, name="fc7_dropout")(normalizer("fc7_norm", fc7_train)(fc7))]
    if context_train is not None:
        ctx = keras.Input((context_train.shape[1],), name="context")
        inputs.append(ctx)
        parts.append(layers.Dropout(dropout, name="context_dropout")(normalizer("context_norm", context_train)(ctx)))
    cond = parts[0] if len(parts) == 1 else layers.Concatenate(name="condition_concat")(parts)
    cond = layers.Dense(units, activation="relu", kernel_regularizer=reg, name="condition")(cond)
    cond = layers.Dropout(dropout, name="condition_dropout")(cond)
    h0 = layers.Dense(units, activation="tanh", kernel_regularizer=reg, name="init_h")(cond)
    c0 = layers.Dense(units, kernel_regularizer=reg, name="init_c")(cond)
    emb = layers.Embedding(embedding.shape[0], embedding.shape[1], mask_zero=True, name="word_embedding",
                           embeddings_initializer=keras.initializers.Constant(embedding))(words)
    emb = layers.Dropout(dropout, name="word_dropout")(emb)
    seq, _, _ = layers.LSTM(units, return_sequences=True, return_state=True, kernel_regularizer=reg,
                            name="decoder")(emb, initial_state=[h0, c0])
    seq = layers.Dropout(dropout, name="decoder_dropout")(seq)
    logits = layers.Dense(vocab_size, kernel_regularizer=reg, name="next_word")(seq)
    return keras.Model([*inputs, words], {"words": logits}, name="caption")


class Decoder:
    """Step-by-step decoding with a trained caption model (loaded in safe mode); ``ban``: the
    word ids it never emits (default the specials but <end>; () decodes as before issue 14)."""

    def __init__(self, model, ban=(PAD_ID, UNK_ID, START_ID)):
        import keras
        import tensorflow as tf

        self.has_context = "context_norm" in {layer.name for layer in model.layers}
        fc7 = keras.Input((model.get_layer("fc7_norm").input.shape[-1],), name="fc7")
        parts = [model.get_layer("fc7_norm")(fc7)]
        inputs = [fc7]
        if self.has_context:
            ctx = keras.Input((model.get_layer("context_norm").input.shape[-1],), name="context")
            inputs.append(ctx)
            parts.append(model.get_layer("context_norm")(ctx))
        cond = parts[0] if len(parts) == 1 else model.get_layer("condition_concat")(parts)
        cond = model.get_layer("condition")(cond)
        encoder = keras.Model(inputs, [model.get_layer("init_h")(cond), model.get_layer("init_c")(cond)])
        units = model.get_layer("decoder").units
        word = keras.Input((1,), dtype="int32", name="word")
        h_in, c_in = keras.Input((units,), name="h"), keras.Input((units,), name="c")
        seq, h, c = model.get_layer("decoder")(model.get_layer("word_embedding")(word), initial_state=[h_in, c_in])
        logp = keras.ops.log_softmax(model.get_layer("next_word")(seq[:, 0]), axis=-1)
        step = keras.Model([word, h_in, c_in], [logp, h, c])
        self.vocab_size = int(model.get_layer("next_word").units)
        # Words the decoders never choose (their scores stay the model's true log-probabilities):
        # <unk> is no word to show, and dropping it after the fact leaves "in" dangling where a
        # name was; <pad> and <start> are never a caption's next word.
        self.ban = np.zeros(self.vocab_size, np.float32)
        self.ban[[i for i in ban if i < self.vocab_size]] = -np.inf
        ban_t = tf.constant(self.ban)
        # The longest caption the model was trained on: decoding stops there.
        self.max_len = int(model.get_layer("word_embedding").input.shape[-1]) - 1
        self._encode = tf.function(lambda xs: encoder(xs, training=False), reduce_retracing=True)
        self._step = tf.function(lambda w, h, c: step([w, h, c], training=False), reduce_retracing=True)

        def step_top(w, h, c, k):
            logp, h, c = step([w, h, c], training=False)
            top = tf.math.top_k(logp + ban_t, k=k)
            return top.values, top.indices, h, c

        # Beam search needs only each hypothesis' k best next words (the k best of all k x V
        # continuations are among them): top_k in the graph, not a sort of k x V in numpy.
        self._step_top = tf.function(step_top, reduce_retracing=True)

    def encode(self, fc7, context=None):
        xs = [np.asarray(fc7, np.float32)]
        if self.has_context:
            if context is None:
                raise ValueError("this caption model reads the article context")
            xs.append(np.asarray(context, np.float32))
        h, c = self._encode(xs)
        return h.numpy(), c.numpy()

    def step(self, words, h, c):
        logp, h, c = self._step(np.asarray(words, np.int32)[:, None], h, c)
        return logp.numpy(), h.numpy(), c.numpy()  # float32; callers sum log-probabilities in float64

    def step_top(self, words, h, c, k: int):
        vals, idx, h, c = self._step_top(np.asarray(words, np.int32)[:, None], h, c, k)
        return vals.numpy(), idx.numpy(), h.numpy(), c.numpy()

    # ---------------------------------------------------------------- decoders

    def greedy(self, fc7, context=None, *, max_len: int | None = None):
        """The most probable next word at each step. Returns (ids [n, max_len], logprob [n], length [n])."""
        max_len = max_len or self.max_len
        h, c = self.encode(fc7, context)
        n = h.shape[0]
        ids = np.full((n, max_len), PAD_ID, np.int32)
        logprob = np.zeros(n)
        done = np.zeros(n, bool)
        length = np.zeros(n, int)
        word = np.full(n, START_ID, np.int32)
        for t in range(max_len):
            logp, h, c = self.step(word, h, c)
            word = np.argmax(logp + self.ban, axis=1).astype(np.int32)
            live = ~done
            logprob[live] += logp[np.arange(n), word][live]
            ids[live, t] = word[live]
            length[live] += 1
            done |= word == END_ID
            if done.all():
                break
        return ids, logprob, length

    def beam(self, fc7, context=None, *, beam: int = td.CAPTION_BEAM, max_len: int | None = None,
             alpha: float = td.CAPTION_LENGTH_ALPHA):
        """Batched beam search: ``beam`` hypotheses per image, all images in one step call.

        A hypothesis ends at <end> (which is counted, as a word) or at max_len words. The winner is
        the finished hypothesis with the best length-normalised score, logprob / length**alpha
        (alpha 0: plain log-probability). The greedy caption is a candidate too, so beam search
        never returns a worse score than greedy on the same model. Returns (ids, logprob, length).
        """
        max_len = max_len or self.max_len
        if beam <= 1:
            return self.greedy(fc7, context, max_len=max_len)
        h, c = self.encode(fc7, context)
        n, k, v = h.shape[0], beam, self.vocab_size
        h, c = np.repeat(h, k, axis=0), np.repeat(c, k, axis=0)
        score = np.full((n, k), -np.inf)
        score[:, 0] = 0.0  # one live hypothesis at the start, not k copies of it
        ids = np.full((n, k, max_len), PAD_ID, np.int32)
        done = np.zeros((n, k), bool)
        length = np.zeros((n, k), int)
        word = np.full(n * k, START_ID, np.int32)
        for t in range(max_len):
            vals, idx, h2, c2 = self.step_top(word, h, c, min(k, v))
            vals, idx = vals.reshape(n, k, -1).astype(np.float64), idx.reshape(n, k, -1).copy()
            if done.any():
                # A finished hypothesis is carried over unchanged, once: it may only "emit" padding, at 0 cost.
                vals[done] = -np.inf
                vals[done, 0] = 0.0
                idx[done, 0] = PAD_ID
            total = (score[:, :, None] + vals).reshape(n, -1)
            top = np.argsort(-total, axis=1, kind="stable")[:, :k]
            src = top // vals.shape[2]
            new_word = np.take_along_axis(idx.reshape(n, -1), top, 1).astype(np.int32)
            score = np.take_along_axis(total, top, 1)
            rows = (np.arange(n)[:, None] * k + src).ravel()
            h, c = h2[rows], c2[rows]
            ids = np.take_along_axis(ids, src[:, :, None], 1)
            was_done = np.take_along_axis(done, src, 1)
            length = np.take_along_axis(length, src, 1)
            ids[:, :, t] = np.where(was_done, PAD_ID, new_word)
            length = length + (~was_done)
            done = was_done | (new_word == END_ID)
            word = np.where(was_done, PAD_ID, new_word).ravel().astype(np.int32)
            word = np.where(word == PAD_ID, END_ID, word)  # a finished row's input does not matter
            if done.all():
                break
        norm = np.where(np.isfinite(score), score / np.maximum(length, 1) ** alpha, -np.inf)
        best = np.argmax(norm, axis=1)
        b_ids = ids[np.arange(n), best]
        b_lp, b_len = score[np.arange(n), best], length[np.arange(n), best]
        g_ids, g_lp, g_len = self.greedy(fc7, context, max_len=max_len)
        use_greedy = g_lp / np.maximum(g_len, 1) ** alpha > norm[np.arange(n), best]
        return (np.where(use_greedy[:, None], g_ids, b_ids), np.where(use_greedy, g_lp, b_lp),
                np.where(use_greedy, g_len, b_len))


def decode_batches(decoder: Decoder, fc7, context=None, *, beam: int, batch: int = td.CAPTION_DECODE_BATCH,
                   progress: str | None = None):
    """Decode many images, ``batch`` at a time (bounded memory); returns (ids, logprob, length)."""
    from newsdl.progress import Progress

    outs = []
    with Progress(progress or "captions", total=len(fc7), unit="images") as bar:
        for lo in range(0, len(fc7), batch):
            ctx = None if context is None else context[lo:lo + batch]
            outs.append(decoder.beam(fc7[lo:lo + batch], ctx, beam=beam))
            bar.update(min(batch, len(fc7) - lo))
    if not outs:
        return np.zeros((0, decoder.max_len), np.int32), np.zeros(0), np.zeros(0, int)
    return tuple(np.concatenate(part) for part in zip(*outs))
