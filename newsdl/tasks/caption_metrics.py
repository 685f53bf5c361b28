"""Caption metrics with the standard COCO implementations (pycocoevalcap): BLEU-1, BLEU-4, METEOR,
ROUGE-L and CIDEr(-D), after the Stanford PTB tokenizer. The tokenizer and METEOR run `java`.

Several systems (the model and the baselines) are scored in one call, so the JVMs start once.
"""

from __future__ import annotations

import shutil

from newsdl.errors import UserError

KEYS = ("bleu1", "bleu4", "meteor", "rouge_l", "cider")


def _check_java() -> None:
    if shutil.which("java") is None:
        raise UserError("java: not found on PATH; the caption metrics (pycocoevalcap's PTB tokenizer and METEOR) "
                        "need a Java runtime, e.g. `apt-get install default-jre-headless`")


def caption_scores(references: list[list[str]], systems: dict[str, list[str]]) -> dict[str, dict]:
    """``references[i]``: the reference captions of image i; ``systems[name][i]``: that system's
    caption of image i. Returns {name: {bleu1, bleu4, meteor, rouge_l, cider}} (corpus-level)."""
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
    tok = PTBTokenizer().tokenize(raw)
    gts = {i: tok[f"r/{i}"] for i in range(n)}
    meteor = Meteor()
    out = {}
    try:
        for name in systems:
            # An empty hypothesis would make METEOR's jar fail; a single space scores 0 as it should.
            res = {i: [tok[f"s{name}/{i}"][0] or " "] for i in range(n)}
            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            out[name] = {"bleu1": float(bleu[0]), "bleu4": float(bleu[3]),
                         "meteor": float(meteor.compute_score(gts, res)[0]),
                         "rouge_l": float(Rouge().compute_score(gts, res)[0]),
                         "cider": float(Cider().compute_score(gts, res)[0])}
    finally:
        _close(meteor)
    return out


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
