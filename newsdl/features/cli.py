"""CLI commands of the features stage: `newsdl featurize` and `newsdl models pull`.

Nothing heavy is imported here: TensorFlow and gensim load inside the commands, so that
`newsdl --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from newsdl import defaults as fd
from newsdl.errors import UserError
from newsdl.features.backbones import BACKBONES


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""
    # `--gpu auto` arrives as the flag and one extra word; extra words stay out of the usage line.
    app.command("featurize", context_settings={"allow_extra_args": True})(featurize)
    models = typer.Typer(help="Pretrained image networks for featurize.", no_args_is_help=True)
    models.command("pull")(pull)
    app.add_typer(models, name="models")


# Choices for --help and shell completion; an unknown name is refused by get_backbone in one line
# (exit 2) rather than by a typer choice type, whose error is a multi-line usage message.
BACKBONE_NAMES = tuple(BACKBONES)
PULLABLE = tuple(name for name, b in BACKBONES.items() if b.imagenet_file)


def _complete_backbone(incomplete: str) -> list[str]:
    return [name for name in BACKBONE_NAMES if name.startswith(incomplete)]


def _complete_pullable(incomplete: str) -> list[str]:
    return [name for name in PULLABLE if name.startswith(incomplete)]


def featurize(
    ctx: typer.Context,
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w",
                                             help="Workspace folder [default: $NEWSDL_WORKSPACE or ./newsdl-work]"),
    text: Optional[bool] = typer.Option(None, "--text/--no-text",
                                        help="word2vec text features [default: on; off with --shard]"),
    images: bool = typer.Option(True, "--images/--no-images", help="CNN image features"),
    gpu: bool = typer.Option(False, "--gpu", help="Run the CNN on the GPU in mixed precision, with larger batches; "
                             "exit 2 if there is none. `--gpu auto`: the GPU if there is one, else the CPU"),
    shard: Optional[str] = typer.Option(None, "--shard", metavar="I/N",
                                        help="Only image shard I of N (0 <= I < N) into images/part-I-of-N.parquet, "
                                        "in chunks: a killed job resumes where it stopped "
                                        "[default: every image, in one run]"),
    merge: bool = typer.Option(False, "--merge", help="After every shard: check each image is featurized or rejected "
                               "exactly once, make the text features, write the manifest"),
    pretrained_vectors: Optional[Path] = typer.Option(
        None, help="Use these word vectors instead of training word2vec: word2vec binary or text (GoogleNews-300), "
        "GloVe text, a gensim .kv/.model (a pickle: trusted files only), or a folder with an .npy matrix and a "
        ".parquet word index"),
    stopwords: Optional[str] = typer.Option(None, help="Drop stop words: 'english' (gensim's list) or a file, one "
                                            "word a line [default: keep every word]"),
    max_tokens: int = typer.Option(fd.MAX_TOKENS, help="Word ids kept per article, padded or cut, for the text CNN"),
    vector_size: int = typer.Option(fd.W2V_DIM, help="word2vec dimensions"),
    window: int = typer.Option(fd.W2V_WINDOW, help="word2vec context window"),
    min_count: int = typer.Option(fd.W2V_MIN_COUNT, help="word2vec: ignore rarer words of the train split"),
    epochs: int = typer.Option(fd.W2V_EPOCHS, help="word2vec passes over the train split"),
    reproducible: Optional[bool] = typer.Option(
        None, "--reproducible/--no-reproducible",
        help=f"word2vec on one thread, so that two runs give identical vectors [default: on for a train split of "
        f"at most {fd.W2V_REPRODUCIBLE_WORDS:,} words, else every core]"),
    backbone: str = typer.Option(fd.BACKBONE, metavar=f"[{'|'.join(BACKBONE_NAMES)}]",
                                 autocompletion=_complete_backbone,
                                 help="vgg16 or vgg19 (FC7, 4096-d), resnet50 (2048-d), "
                                 "mobilenet_v3_small (576-d), small_cnn (256-d, random weights: tests, CPU demo)"),
    weights: str = typer.Option(fd.WEIGHTS, help="imagenet (from the Keras cache: `newsdl models pull`), a .keras or "
                                ".h5 file, or random"),
    layer: Optional[str] = typer.Option(None, help="Feature layer [default: fc2 for VGG, avg_pool for the others]; "
                                        "a spatial layer is average-pooled"),
    image_size: Optional[int] = typer.Option(None, help="Input side in pixels [default: 224; small_cnn 96] "
                                             "(VGG takes 224 only)"),
    batch_size: Optional[int] = typer.Option(None, help=f"Images per forward pass [default: {fd.IMAGE_BATCH_CPU}, "
                                             f"{fd.IMAGE_BATCH_GPU} with --gpu]"),
    chunk_size: int = typer.Option(fd.IMAGE_CHUNK, help="Images per resumable chunk of a shard"),
    max_images: Optional[int] = typer.Option(None, help="Only the first N images of ingest/images.parquet "
                                             "[default: all]"),
    force: bool = typer.Option(False, "--force", help="Redo the stage even if it is up to date"),
) -> None:
    """Text features (word2vec) and image features (CNN, FC7 of VGG16) into WORKSPACE/features/."""
    # typer has no option with an optional value, so `--gpu auto` parses as the flag and a word.
    words = list(ctx.args)
    gpu_mode = words[0] if words else None
    if len(words) > 1 or (gpu_mode is not None and not (gpu and gpu_mode == "auto")):
        raise UserError(f"unexpected argument '{words[-1] if gpu_mode == 'auto' else gpu_mode}' (the only word "
                        f"featurize takes is 'auto', after --gpu)")
    from newsdl.features.run import run_featurize

    result = run_featurize(
        workspace, text=text, images=images, shard=shard, merge=merge,
        gpu=("auto" if gpu_mode else "on") if gpu else "off", pretrained_vectors=pretrained_vectors,
        stopwords=stopwords, max_tokens=max_tokens, vector_size=vector_size, window=window, min_count=min_count,
        epochs=epochs, backbone=backbone, weights=weights, layer=layer, image_size=image_size,
        batch_size=batch_size, chunk_size=chunk_size, max_images=max_images, force=force, reproducible=reproducible)
    for line in summary(result):
        typer.echo(line)


def summary(result: dict) -> list[str]:
    """What featurize did, in sentences. A run that is not sharded says nothing of shards or parts."""
    if result.get("skipped"):
        return ["featurize: up to date, nothing done (--force to redo)"]
    lines = []
    if "text" in result:
        t = result["text"]
        by_split = ", ".join(f"{s} {100 * r:.1f}%" for s, r in t["oov_rate_by_split"].items())
        lines.append(f"text: {t['articles']:,} articles, {t['words']:,} words, vocabulary {t['vocab']:,}, "
                     f"out of vocabulary {100 * t['oov_rate']:.1f}% ({by_split}), "
                     f"{t['articles_no_known_words']:,} articles with no known word")
        w2v = t.get("word2vec") or {}
        if "words_per_s" in w2v:
            lines.append(f"  word2vec: {w2v['train_words']:,} training words, {w2v['words_per_s']:,} words/s")
    sharded = "images" not in result or "merge" not in result  # a --shard or a --merge run
    if "images" in result:
        i = result["images"]
        rate = f", {i['images_per_s']:,} images/s on the {i['device'].upper()}" if "images_per_s" in i else ""
        done = "up to date: " if i.get("skipped") else ""
        line = f"images: {done}{i['images']:,} images, {i['featurized']:,} featurized, {i['rejected']:,} rejected{rate}"
        chunks = i["chunks_computed"] + i["chunks_reused"]
        if sharded:
            line += f"; chunks computed {i['chunks_computed']:,}, reused {i['chunks_reused']:,}"
        elif i["chunks_reused"]:
            line += f"; resumed: {i['chunks_reused']:,} of {chunks:,} chunks were done before"
        if not sharded and i["rejected"]:
            line += "; reasons: features/images/rejected.jsonl"
        lines.append(line)
    if "merge" in result and sharded:
        m = result["merge"]
        parts = f"{m['parts']} part covers" if m["parts"] == 1 else f"{m['parts']:,} parts cover"
        lines.append(f"merge: {parts} all {m['images']:,} images ({m['featurized']:,} featurized, "
                     f"{m['rejected']:,} rejected: features/images/rejected.jsonl)")
    return lines


def pull(name: str = typer.Argument(..., metavar="NAME", autocompletion=_complete_pullable,
                                    help=f"The network: {', '.join(PULLABLE)}")) -> None:
    """Download a network's ImageNet weights into the Keras cache, once, for machines without internet."""
    from newsdl.features.backbones import get_backbone

    if get_backbone(name, option="models pull").imagenet_file is None:  # fail before the TensorFlow import
        raise UserError(f"models pull {name}: {name} has no ImageNet weights; it runs with --weights random or a file")
    from newsdl.features.images import pull as pull_weights
    from newsdl.workspace import sha256_file

    path = pull_weights(name)
    typer.echo(f"{name}: ImageNet weights in {path} (sha256 {sha256_file(path)}); copy that file to the same "
               f"place on machines without internet (or point KERAS_HOME at its parent's parent)")
