"""Names in captions, as news captioning handles them (GoodNews: Biten et al., CVPR 2019, "Good
News, Everyone! Context driven entity-aware captioning for news images").

A news caption's names (where it was taken, who is in it) are mostly seen once in a corpus: a
word-level decoder cannot learn them, and emits <unk> or a wrong name in their place. So:
- at training time each name in a reference caption becomes a placeholder of its type, <place>
  or <person> (`template_tokens`), and the decoder learns where a name goes, not which;
- at decode time each placeholder is filled with a name of that type that the image's article
  gives (`article_names`, `fill`), ranked by the article as GoodNews's frequency variant does:
  the k-th placeholder of a type in a caption takes the article's k-th most mentioned name of
  that type.

What counts as a name:
- place: what the gazetteer (newsdl/features/gazetteer.py) resolves in the text, its GeoNames
  name; places one comma apart ("Paris, Texas") are one place. The article's places rank as the
  gazetteer ranks them (mentions, then cities before regions and countries, then population).
- person: two to four consecutive capitalised words, with nothing but a space between them,
  that are not part of a place name; leading function words ("The", "In"), titles ("President",
  "Mr") and month and day names are not part of it (so a sentence-initial "In" is never one),
  nor is an all-capitals word (a dateline). An article's persons rank by mentions, a surname
  alone counting for the full name it ends ("Obama" for "Barack Obama"), then by first mention;
  a place whose name is a word of a person's name the article gives is not one of its places.
  Organisations are not told apart from persons ("White House" is a person by this rule).

A placeholder with nothing to fill it (the article names no place, or fewer persons than the
caption wants) is dropped with the preposition before it ("in <place>" -> ""), and a caption is
never left ending in a preposition or a conjunction ("four clouds over the coast in" -> "four
clouds over the coast"): a shorter caption reads better than a dangling one, and a generic word
("somewhere") would only be a guessed word to the metrics.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

PLACE, PERSON = "<place>", "<person>"
PLACEHOLDERS = (PLACE, PERSON)

# A word: letters with inner apostrophes and hyphens ("O'Neill", "Saint-Denis").
_WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")
# Words that precede a name in a caption, and that make no sense once the name is gone.
PREPOSITIONS = frozenset(
    "in at of from near to outside over on by with for into across around between inside off towards toward "
    "during after before above under behind beside alongside against via throughout within".split())
CONJUNCTIONS = frozenset("and or & as".split())
# Words that start a capitalised run without being part of a person's name.
TITLES = frozenset(
    "mr mrs ms miss dr sir dame lord lady prof professor president vice prime minister secretary chancellor "
    "premier governor senator sen rep congressman congresswoman mayor king queen prince princess pope saint "
    "st general gen colonel col captain capt lieutenant sergeant sgt officer chief judge justice "
    "ambassador bishop archbishop rev reverend father sister brother coach manager chairman chairwoman "
    "leader deputy foreign defence defense finance home interior state opposition former late new".split())
MONTHS_DAYS = frozenset(
    "january february march april may june july august september october november december "
    "monday tuesday wednesday thursday friday saturday sunday".split())


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from gensim.parsing.preprocessing import STOPWORDS

    return frozenset(STOPWORDS)


def _not_a_name_word(word: str) -> bool:
    low = word.lower()
    return low in _stopwords() or low in TITLES or low in MONTHS_DAYS


# ------------------------------------------------------------------ finding names

def place_spans(text: str, resolved: list[tuple[int, int, int]] | None = None) -> list[tuple[int, int, str]]:
    """(start, end, GeoNames name) of each place named in ``text``; places one comma apart are one
    span (with the first's name: "Paris, Texas" is Paris). ``resolved``: the gazetteer's
    ``resolve(text)``, when the caller already has it."""
    from newsdl.features.gazetteer import gazetteer

    g = gazetteer()
    spans: list[tuple[int, int, str]] = []
    for start, end, pid in g.resolve(text) if resolved is None else resolved:
        if spans and re.fullmatch(r"\s*,\s*", text[spans[-1][1]:start]):
            spans[-1] = (spans[-1][0], end, spans[-1][2])
        else:
            spans.append((start, end, g.places[pid].name))
    return spans


def person_spans(text: str, places: list[tuple[int, int, str]] | None = None) -> list[tuple[int, int, str]]:
    """(start, end, name) of each person's name in ``text`` (the module's rule), skipping the
    place spans ``places`` (found when not given)."""
    if places is None:
        places = place_spans(text)
    in_place = [(a, b) for a, b, _ in places]

    def is_place(a: int, b: int) -> bool:
        return any(a < pb and pa < b for pa, pb in in_place)

    out: list[tuple[int, int, str]] = []
    run: list[re.Match] = []

    def close():
        words = list(run)
        while words and _not_a_name_word(words[0].group()):
            words.pop(0)
        while words and _not_a_name_word(words[-1].group()):
            words.pop()
        if 2 <= len(words) <= 4:
            a, b = words[0].start(), words[-1].end()
            out.append((a, b, text[a:b]))
        run.clear()

    for m in _WORD.finditer(text):
        w = m.group()
        capital = w[0].isupper() and not (len(w) > 1 and w.isupper())
        joined = bool(run) and text[run[-1].end():m.start()] == " "
        if not capital or is_place(m.start(), m.end()) or (run and not joined):
            close()
        if capital and not is_place(m.start(), m.end()):
            if run and _not_a_name_word(w) and not _not_a_name_word(run[-1].group()):
                close()  # "John Smith The ..." or "Smith And": a function word ends a name
            run.append(m)
    close()
    return out


def entity_spans(text: str) -> list[tuple[int, int, str, str]]:
    """(start, end, placeholder, name) of every place and person in ``text``, in order."""
    places = place_spans(text)
    found = [(a, b, PLACE, n) for a, b, n in places] + [(a, b, PERSON, n) for a, b, n in person_spans(text, places)]
    return sorted(found)


def template_tokens(caption: str) -> list[str]:
    """A caption's words (the suite's tokenizer) with each name replaced by its placeholder:
    "Barack Obama speaks in Paris" -> ["<person>", "speaks", "in", "<place>"]."""
    from newsdl.features.tokenize import tokenize

    tokens, at = [], 0
    for start, end, kind, _ in entity_spans(caption):
        tokens += tokenize(caption[at:start])
        if not (tokens and tokens[-1] == kind):  # "Paris and London"-like runs stay two; touching ones one
            tokens.append(kind)
        at = end
    return tokens + tokenize(caption[at:])


def article_names(text: str | None, title: str | None = None) -> dict[str, list[str]]:
    """The names an article gives, per placeholder, the most mentioned first (the module's
    ranking); the title counts as part of the text."""
    from newsdl.features.gazetteer import gazetteer

    full = "\n\n".join(t for t in (title, text) if t)
    if not full:
        return {PLACE: [], PERSON: []}
    g = gazetteer()
    resolved = g.resolve(full)  # the costly step, once for both kinds of name
    persons = person_spans(full, place_spans(full, resolved))
    # A person's surname is no place ("Obama" is also a town in Japan): once the article names
    # the person in full, the word alone means them.
    person_words = {w for _, _, name in persons for w in name.split()}
    places = [name for name in (g.places[m.place].name for m in g.mentions(full, resolved))
              if name not in person_words]
    counts = Counter(name for _, _, name in persons)
    first: dict[str, int] = {}
    for k, (_, _, name) in enumerate(persons):
        first.setdefault(name, k)
    # A surname alone (outside a full name) counts for the most mentioned full name it ends.
    surname_of: dict[str, str] = {}
    for name in sorted(counts, key=lambda n: (-counts[n], first[n])):
        surname_of.setdefault(name.split()[-1], name)
    inside = [(a, b) for a, b, _ in persons]
    for m in _WORD.finditer(full):
        owner = surname_of.get(m.group())
        if owner and not any(a <= m.start() < b for a, b in inside):
            counts[owner] += 1
    return {PLACE: places, PERSON: sorted(counts, key=lambda n: (-counts[n], first[n]))}


# ------------------------------------------------------------------ filling

def fill(template: list[str] | str, names: dict[str, list[str]] | None) -> str:
    """The caption with the k-th placeholder of each type replaced by ``names[type][k]``; a
    placeholder without a name is dropped with its preposition, and the caption tidied (`tidy`).
    ``names`` None or empty: every placeholder is dropped (the caption "without filling")."""
    words = template.split() if isinstance(template, str) else list(template)
    names, used, out = names or {}, Counter(), []
    for k, w in enumerate(words):
        if w in PLACEHOLDERS:
            if k and words[k - 1] == w:
                continue  # a repeated placeholder is one name, not two
            pool, rank = names.get(w, []), used[w]
            used[w] += 1
            out.append(pool[rank] if rank < len(pool) else w)  # unfilled: tidy drops it
        else:
            out.append(w)
    return tidy(out)


def tidy(words: list[str]) -> str:
    """The caption's words without what cannot be shown, and without what a dropped word leaves
    dangling: a special token (<unk>) or an unfilled placeholder goes with the prepositions and
    conjunctions before it ("and <person>", "in <place>"), and a caption neither starts with a
    conjunction nor ends in a preposition or a conjunction."""
    out: list[str] = []
    for w in words:
        if w.startswith("<") and w.endswith(">"):
            while out and (out[-1].lower() in PREPOSITIONS or out[-1].lower() in CONJUNCTIONS):
                out.pop()
            continue
        if not out and w.lower() in CONJUNCTIONS:
            continue
        out.append(w)
    while out and (out[-1].lower() in PREPOSITIONS or out[-1].lower() in CONJUNCTIONS):
        out.pop()
    return " ".join(out)


def scored(caption: str) -> str:
    """A caption as the metrics compare captions: the suite's tokenizer's words."""
    from newsdl.features.tokenize import tokenize

    return " ".join(tokenize(caption))
