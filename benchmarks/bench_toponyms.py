"""Toponym resolution of the gazetteer (newsdl.features.gazetteer) against gold annotations.

    python benchmarks/bench_toponyms.py CORPUS.jsonl.gz [--out benchmarks/results/toponyms.json]

CORPUS: gzipped JSONL stories with `text`, `corpus` (subset name), `geo` {lat, lon} (the
story's place) and `toponyms`, gold mentions {start, end, lat, lon} (character offsets into
`text`). Measured for the gazetteer before the resolver (commit 58c36c7, "old", loaded from git) and the
working tree's ("new"), in the same run:
  resolution   share of gold mentions resolved to a point within 161 km of the gold point; a
               mention not detected at that span (no overlapping predicted span) counts as wrong
  detection    share of gold mentions overlapped by a predicted span (recall)
  precision    share of predicted spans that overlap a gold mention
  top_place    share of stories whose most-mentioned place is within 161 km of `geo` (what
               the geoloc "gazetteer" baseline predicts; stories naming no place count as wrong)
  found        share of stories naming any place
  build_s, per_1k_s  index build time, and time of features() per 1,000 stories
Overall and per corpus subset.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The last commit with the old look-up (mention counts, no context but named countries).
BASELINE_COMMIT = "58c36c7"
sys.path.insert(0, str(ROOT))

from newsdl.geo import gcd_km  # noqa: E402

KM = 161.0


def load_old():
    """The gazetteer module before the resolver (BASELINE_COMMIT), as a throwaway module."""
    src = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:newsdl/features/gazetteer.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "gazetteer_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("gazetteer_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gazetteer_old"] = mod
    spec.loader.exec_module(mod)
    return mod


def old_spans(mod, g, text: str) -> list[tuple[int, int, int]]:
    """The old mentions() loop, keeping spans: "U.S." is padded to "US  " so offsets hold."""
    if not text:
        return []
    text = mod._DOTTED.sub(lambda m: "".join(x for x in m.groups() if x).ljust(len(m.group())), text)
    spans = [(m.start(), m.end(), m.group()) for m in mod._WORD.finditer(text)]
    lower = [w.lower() for _, _, w in spans]
    hits, i = [], 0
    while i < len(spans):
        start, _, word = spans[i]
        if not word[0].isupper():
            i += 1
            continue
        matched = 0
        for n in range(min(mod.MAX_NGRAM, len(spans) - i), 0, -1):
            key = tuple(lower[i:i + n])
            if key in g.index:
                if n == 1 and key[0] in g.common and mod._SENTENCE_END.search(text[max(0, start - 3):start]):
                    break
                hits.append((start, spans[i + n - 1][1], key))
                matched = n
                break
        i += matched or 1
    named = {g.places[g.index[k][0]].country for _, _, k in hits if g.places[g.index[k][0]].kind == "country"}
    return [(a, b, g._resolve(g.index[k], named)) for a, b, k in hits]


def score(records, spans_of, g, top_place) -> dict:
    subsets = sorted({r["corpus"] for r in records})
    out = {}
    for subset in ["all"] + subsets:
        rows = [r for r in records if subset == "all" or r["corpus"] == subset]
        gold = ok = det = pred = pred_ok = 0
        for r in rows:
            spans = spans_of(r["text"])
            pred += len(spans)
            for a, b, _ in spans:
                pred_ok += any(a < t["end"] and t["start"] < b for t in r["toponyms"])
            for t in r["toponyms"]:
                gold += 1
                over = [(min(b, t["end"]) - max(a, t["start"]), pid) for a, b, pid in spans
                        if a < t["end"] and t["start"] < b]
                if not over:
                    continue
                det += 1
                pid = max(over)[1]
                ok += float(gcd_km(g.lat[pid], g.lon[pid], t["lat"], t["lon"])) <= KM
        lat, lon, found = top_place([r["text"] for r in rows])
        glat = np.array([r["geo"]["lat"] for r in rows])
        glon = np.array([r["geo"]["lon"] for r in rows])
        d = np.where(found, gcd_km(np.nan_to_num(lat), np.nan_to_num(lon), glat, glon), np.inf)
        out[subset] = {"stories": len(rows), "mentions": gold, "resolution": round(ok / gold, 4),
                       "detection": round(det / gold, 4), "precision": round(pred_ok / max(pred, 1), 4),
                       "top_place": round(float(np.mean(d <= KM)), 4), "found": round(float(found.mean()), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with gzip.open(args.corpus, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]

    from newsdl.features import gazetteer as new

    old = load_old()
    results = {}
    for name, mod in (("old", old), ("new", new)):
        t = time.perf_counter()
        g = mod.Gazetteer()
        build = time.perf_counter() - t
        texts = [r["text"] for r in records]
        t = time.perf_counter()
        g.features(texts)
        per_1k = (time.perf_counter() - t) / len(texts) * 1000
        words = sum(len(x.split()) for x in texts) / len(texts)
        spans_of = (lambda text, g=g: old_spans(old, g, text)) if name == "old" else g.resolve
        results[name] = {"build_s": round(build, 2), "per_1k_s": round(per_1k, 3), "words_per_story": round(words),
                         "places": len(g.places), **score(records, spans_of, g, g.top_place)}

    cols = ("resolution", "detection", "precision", "top_place", "found")
    print(f"{'subset':<12}{'stories':>8}{'mentions':>9}  " + "  ".join(f"{c:>17}" for c in cols))
    for subset in [k for k in results["new"] if isinstance(results["new"][k], dict)]:
        o, n = results["old"][subset], results["new"][subset]
        print(f"{subset:<12}{n['stories']:>8}{n['mentions']:>9}  "
              + "  ".join(f"{o[c]:>7.3f} -> {n[c]:<7.3f}" for c in cols))
    for name in ("old", "new"):
        r = results[name]
        print(f"{name}: build {r['build_s']} s, features {r['per_1k_s']} s per 1,000 stories "
              f"of ~{r['words_per_story']} words, {r['places']} places")
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    results["corpus"] = os.path.basename(args.corpus)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
