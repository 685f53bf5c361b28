"""The gazetteer's toponym resolution on hand-written stories (the build is cached per process)."""

import pytest

from newsdl.features.gazetteer import gazetteer


@pytest.fixture(scope="module")
def names():
    g = gazetteer()

    def run(text):
        return [(g.places[m.place].name, g.places[m.place].country, g.places[m.place].admin1)
                for m in g.mentions(text)]
    return run


def test_homonyms_follow_the_story(names):
    found = names("Firefighters in Alexandria battled the blaze. Louisiana officials said the fire spread.")
    assert ("Alexandria", "US", "LA") in found and ("Louisiana", "US", "LA") in found
    assert names("A fair opened in Paris, Texas, on Friday.")[0] == ("Paris", "US", "TX")
    assert names("Traffic slowed in London, Ontario, after the storm.")[0] == ("London", "CA", "08")
    assert names("Rain fell in Pineville, La., overnight.")[0] == ("Pineville", "US", "LA")


def test_homonyms_default_to_the_largest(names):
    assert names("Rain fell on London all week.")[0][:2] == ("London", "GB")
    assert names("Crowds filled Alexandria on Friday.")[0][:2] == ("Alexandria", "EG")


def test_demonyms_multiword_names_and_states(names):
    assert names("French officials said talks would resume.") == [("France", "FR", "")]
    assert names("Israelis voted on Tuesday.")[0][:2] == ("Israel", "IL")
    assert names("A Texan rancher sold cattle.")[0][:2] == ("Texas", "US")
    for city in ("New York", "Rio de Janeiro", "Salt Lake City"):
        assert names(f"Prices rose in {city} last week.")[0][0] == city
    assert names("Voters in Ohio went to the polls.")[0] == ("Ohio", "US", "OH")


def test_no_place_and_sentence_initial_words(names):
    assert names("The committee met on Tuesday and adjourned without a vote.") == []
    assert names("Police said nothing. Reading is fun.") == []
    assert gazetteer().mentions("") == [] and gazetteer().mentions(None) == []


def test_small_towns_need_context(names):
    assert names("Mark said the plan was fine.") == []  # a person, not a hamlet
    found = names("A Pineville man was arrested. Louisiana police said the Pineville home burned.")
    assert found[0] == ("Pineville", "US", "LA")
