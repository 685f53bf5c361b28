"""The sample corpus' world: outlets with their habits, topics with their words and scenes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outlet:
    name: str
    home: tuple[str, ...]  # country codes it mostly reports from
    home_share: float  # probability that a story is set at home
    words: tuple[int, int]  # article length range, in words
    topics: dict[str, float]  # topic mix (unnormalised)
    phrases: tuple[str, ...]  # house style: stock phrases, used now and then
    spelling: str  # "uk" or "us"
    comments: float  # log-scale offset of comment counts


TOPICS = {
    "politics": dict(
        words="government minister parliament election vote campaign policy party leader opposition "
              "senator cabinet coalition reform budget debate referendum spokesman negotiations "
              "legislation poll constituency mandate",
        scene="podium", objects=("flags", "podiums", "microphones"),
        colours=("blue", "red", "white"), comments=0.6),
    "business": dict(
        words="shares market investors profit company bank economy growth prices quarter revenue "
              "chief executive inflation interest rates exports deal merger stock earnings trade "
              "analysts",
        scene="chart", objects=("bars", "charts", "graphs"),
        colours=("green", "blue", "grey"), comments=-0.2),
    "sport": dict(
        words="match team season goal coach players league championship victory final score "
              "tournament striker cup fans stadium injury transfer defeat win title squad",
        scene="field", objects=("balls", "players", "goals"),
        colours=("green", "white", "yellow"), comments=0.3),
    "technology": dict(
        words="software users internet smartphone app data company launch device security "
              "online network startup digital computer privacy platform update tablet developers",
        scene="screen", objects=("screens", "phones", "devices"),
        colours=("black", "blue", "silver"), comments=0.1),
    "health": dict(
        words="patients hospital doctors health disease treatment study virus vaccine nurses "
              "outbreak cancer drug medical care clinic infection symptoms researchers trial",
        scene="cross", objects=("crosses", "beds", "ambulances"),
        colours=("white", "red", "blue"), comments=-0.1),
    "science": dict(
        words="scientists research study space discovery species climate planet universe "
              "researchers experiment telescope evidence data laboratory fossil mission orbit "
              "genes ocean",
        scene="sky", objects=("stars", "planets", "moons"),
        colours=("black", "purple", "white"), comments=-0.3),
    "entertainment": dict(
        words="film star music album festival actor singer show award concert television fans "
              "premiere director series celebrity stage tour box office hollywood",
        scene="stage", objects=("spotlights", "stars", "curtains"),
        colours=("purple", "gold", "red"), comments=0.8),
    "weather": dict(
        words="storm rain flooding weather temperatures wind forecast snow heat residents "
              "emergency evacuated damage drought fire bushfire warning coast rivers",
        scene="clouds", objects=("clouds", "raindrops", "waves"),
        colours=("grey", "blue", "white"), comments=-0.4),
    "crime": dict(
        words="police court arrested charged murder trial judge investigation suspect prison "
              "officers sentenced victim jury evidence detectives robbery guilty lawyer bail",
        scene="lights", objects=("lights", "cars", "badges"),
        colours=("blue", "red", "black"), comments=0.4),
    "conflict": dict(
        words="military troops forces attack rebels killed soldiers ceasefire border fighting "
              "army security civilians refugees talks sanctions violence strikes protesters crisis",
        scene="smoke", objects=("tanks", "clouds of smoke", "tents"),
        colours=("brown", "grey", "orange"), comments=0.5),
}

OUTLETS = (
    Outlet("bbc", ("GB",), 0.35, (260, 620),
           dict(politics=3, business=2, sport=2, technology=1.5, health=1.5, science=1.5, entertainment=1,
                weather=1, crime=1, conflict=2),
           ("BBC correspondents say", "the corporation understands", "reports from the region suggest"),
           "uk", 0.2),
    Outlet("guardian", ("GB",), 0.40, (450, 900),
           dict(politics=3.5, business=1.5, sport=1.5, technology=1.5, health=1, science=2, entertainment=1.5,
                weather=1, crime=1, conflict=1.5),
           ("campaigners argue", "critics have warned", "writing in the paper"),
           "uk", 1.0),
    Outlet("telegraph", ("GB",), 0.45, (350, 800),
           dict(politics=3, business=2.5, sport=2.5, technology=1, health=1, science=1, entertainment=1,
                weather=1, crime=1.5, conflict=1),
           ("senior sources told", "it can be revealed", "the paper has learned"),
           "uk", 0.6),
    Outlet("independent", ("IE", "GB"), 0.55, (250, 650),
           dict(politics=2, business=2, sport=3, technology=1, health=1.5, science=0.5, entertainment=1.5,
                weather=1.5, crime=2, conflict=0.5),
           ("gardai said", "a spokeswoman confirmed", "local sources indicated"),
           "uk", -0.3),
    Outlet("smh", ("AU", "NZ"), 0.60, (300, 700),
           dict(politics=2, business=2, sport=3, technology=1, health=1, science=1, entertainment=1,
                weather=2.5, crime=1.5, conflict=0.5),
           ("state authorities confirmed", "a spokeswoman for the premier said", "local residents reported"),
           "uk", -0.2),
    Outlet("wapo", ("US",), 0.60, (450, 950),
           dict(politics=4, business=2, sport=1, technology=1.5, health=1.5, science=1, entertainment=0.5,
                weather=1, crime=1.5, conflict=2),
           ("administration officials said", "according to people familiar with the matter",
            "lawmakers on Capitol Hill"),
           "us", 0.7),
    Outlet("yahoo", ("US",), 0.40, (150, 450),
           dict(politics=1.5, business=1.5, sport=2, technology=2, health=1.5, science=1, entertainment=4,
                weather=1.5, crime=1.5, conflict=1),
           ("a statement said", "according to reports", "the news comes as"),
           "us", 0.3),
)

# British and American spellings of the same words: a habit an outlet can't hide.
SPELLINGS = {
    "organisation": "organization", "colour": "color", "centre": "center", "defence": "defense",
    "favour": "favor", "programme": "program", "labour": "labor", "analyse": "analyze",
    "neighbour": "neighbor", "criticised": "criticized",
}

# Words that every outlet uses: the shared background of news prose.
COMMON = ("said officials people year week told reported statement new former local national "
          "public according including group million percent time day month several government").split()

SENTENCES = (
    "{Lead} {verb} on {day} in {place}, {where}.",
    "The {w1} {verb2} after {w2} and {w3} {near} {place}.",
    "{Phrase}, the {w1} in {place} could affect {w2} across {country}.",
    "Officials in {place} said the {w1} would continue, while {w2} {verb2} {where}.",
    "Residents of {place} described the {w1} as {adj}.",
    "The {w1} has drawn attention to {w2} in {country} and beyond.",
    "{Phrase}. The {w1} and the {w2} were {adj} this {period}.",
    "Meanwhile in {distractor}, {w2} {verb2} as {w3} {verb2}.",
    "Earlier, a similar {w1} was reported in {distractor}.",
    "In {country}, the {w1} follows months of {w2} over the {w3} {organisation}.",
    "A {colour} banner at the {centre} in {place} called for {w2}.",
    "The {programme} will be reviewed by the {organisation} in {place}, a statement said.",
)
LEADS = ("Authorities", "Witnesses", "Officials", "Experts", "Organisers", "Local leaders", "Analysts")
VERBS = ("confirmed the news", "spoke to reporters", "gathered", "met", "responded", "issued a warning")
VERBS2 = ("rose sharply", "fell", "continued", "were questioned", "drew criticism", "were announced",
          "stalled", "gained support")
ADJ = ("unprecedented", "significant", "worrying", "historic", "unexpected", "controversial", "modest")
PERIODS = ("week", "month", "morning", "weekend", "year")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
NEAR = ("near", "outside", "in central", "north of", "south of", "east of", "west of")

# Colours the image drawer knows, as RGB.
RGB = {
    "blue": (40, 80, 200), "red": (200, 40, 40), "white": (235, 235, 235), "green": (40, 160, 60),
    "grey": (128, 128, 128), "yellow": (230, 210, 40), "black": (25, 25, 25), "silver": (190, 190, 200),
    "purple": (120, 50, 160), "gold": (210, 170, 40), "brown": (120, 80, 40), "orange": (240, 140, 30),
}
