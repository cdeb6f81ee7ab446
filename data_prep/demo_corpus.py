"""A small bilingual demo corpus, generated deterministically by the project itself.

Why this exists: the README's main job (train a tokenizer, tokenise, run a tiny GLM on CPU) and the
test suite need input in the three formats the data pipeline reads, yet no external corpus may be
fetched on a developer machine or in CI.  So the project writes its own, and ships the output in
``data_prep/demo_corpus/``:

* ``pile-demo.jsonl.zst`` - English, The Pile's format: zstd-compressed JSON lines
  ``{"text": ..., "meta": {"pile_set_name": ...}}`` (Pile-CC, Wikipedia (en), Github, ArXiv,
  StackExchange);
* ``wudao-demo.json`` - Chinese, WuDaoCorpora's format: one pretty-printed JSON array of
  ``{"id", "uniqueKey", "titleUkey", "dataType", "title", "content"}`` records (百科, 新闻, 问答);
* ``mip-demo.jsonl`` - multitask instruction prompts, P3/promptsource style: ``{"inputs",
  "targets", "task"}`` per line, whose targets are correct for their inputs.

The text is synthetic but language-like and learnable: sentences come from templates over small
hand-written vocabularies, and every document first draws one set of facts (a city, its river,
founding year, population, a company, a person with a pronoun and a life span, ...) that all of its
sentences reuse, so facts stay consistent inside a document.  ``[a|b|c]`` in a template is a
random alternative.

Determinism: the same ``seed`` and ``scale`` give the same bytes on every machine.  All randomness
comes from ``random.Random`` instances seeded with integers; vocabularies are lists and tuples
(never sets), JSON keys keep insertion order, files are written as bytes with ``\\n`` line ends,
and zstd runs single-threaded at a fixed level (zstandard==0.25.0, pinned in requirements).

Regenerate the bundled copy with ``python -m data_prep.demo_corpus data_prep/demo_corpus``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

PILE_FILE, WUDAO_FILE, MIP_FILE = "pile-demo.jsonl.zst", "wudao-demo.json", "mip-demo.jsonl"
PILE_DOCS, WUDAO_DOCS, MIP_EXAMPLES = 2500, 2000, 1200  # at scale 1.0
ZSTD_LEVEL = 10

# ---------------------------------------------------------------- template helpers
_ALT = re.compile(r"\[([^\[\]]*\|[^\[\]]*)\]")


def _fill(rng: random.Random, template: str, facts: dict, cap: bool = True) -> str:
    """Pick one of each ``[a|b]`` (left to right), then ``str.format(**facts)``; capitalise."""
    text = _ALT.sub(lambda m: rng.choice(m.group(1).split("|")), template).format(**facts)
    return text[:1].upper() + text[1:] if cap else text


def _para(rng: random.Random, sentences, facts: dict, keep: float = 0.8, sep: str = " ") -> str:
    """The first sentence always, each later one with probability ``keep``, in order."""
    chosen = [sentences[0]] + [s for s in sentences[1:] if rng.random() < keep]
    return sep.join(_fill(rng, s, facts) for s in chosen)


def _sections(rng: random.Random, sections, facts: dict, sep: str = " ", para_sep: str = "\n\n", least: int = 1) -> str:
    """The first ``least``..all sections: lengths vary from a few sentences to several paragraphs."""
    n = rng.randint(min(least, len(sections)), len(sections))
    return para_sep.join(_para(rng, s, facts, sep=sep) for s in sections[:n])


def _two(rng: random.Random, items):
    """Two different items."""
    a = rng.choice(items)
    b = rng.choice(items)
    while b == a:
        b = rng.choice(items)
    return a, b


# ---------------------------------------------------------------- English vocabulary
FIRST_F = "Anna Clara Elena Grace Ines Karin Maya Olga Rosa Tara Vera Yara Zoe Bea Dara Lena".split()
FIRST_M = "Ben David Farid Hugo Jonas Leo Nils Pavel Samir Umar Wim Arjun Colm Emil Tomas Ravi".split()
LAST = ("Adler Berg Costa Dahl Evans Falk Gray Holm Ivers Jensen Kerr Lund Moreau Novak Ortiz Park "
        "Quist Reyes Sato Torres Ueda Varga Weber Young Zhou Brandt Castell Doyle Engel Fischer").split()
CITIES = [a + b
          for a in "Nor Ash Bel Cal Dun El Fair Glen Har Kings Lin Mar Oak Pen Riv Stan Thorn Wes Ald Bram".split()
          for b in "haven ford bridge ton field wick mouth dale port stead worth by".split()]
REGIONS = ["Velmora", "Castora", "Lundria", "the Eastern Plains", "the Northern Coast",
           "the Amber Valley", "the Western Highlands", "Orlen Province"]
RIVERS = "Aven Tessa Morrow Kell Silva Darrow Lune Ostra Brenn Willow".split()
INDUSTRIES = [("shipbuilding", "Shipyards"), ("textile", "Textiles"), ("software", "Systems"),
              ("farming", "Farms"), ("tourism", "Travel"), ("mining", "Mining"), ("fishing", "Fisheries"),
              ("publishing", "Press"), ("glassmaking", "Glassworks"), ("wine", "Vineyards")]
FEATURES = ["old harbour", "stone bridges", "botanical garden", "cathedral", "covered market",
            "university", "lighthouse", "city walls", "canals", "music festival"]
MONTHS = "January February March April May June July August September October November December".split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
PRODUCTS = ["coffee maker", "backpack", "desk lamp", "bicycle", "phone case", "kettle",
            "pair of headphones", "office chair", "rain jacket", "blender"]
JOBS = "baker teacher nurse carpenter pilot farmer librarian engineer painter chef".split()
COLORS = "red blue green black white yellow grey silver".split()
FOODS = "soup pasta rice bread cheese noodles salad dumplings".split()
VEGETABLES = [("onions", "onion"), ("carrots", "carrot"), ("leeks", "leek"), ("potatoes", "potato"),
              ("mushrooms", "mushroom"), ("peppers", "pepper"), ("tomatoes", "tomato"), ("courgettes", "courgette")]
EXTRAS = ["cream", "cheese", "honey", "lemon juice", "parsley", "garlic"]
MONTH_TEMP = [-5, -2, 5, 12, 18, 23, 27, 26, 21, 14, 6, -1]  # a typical temperature per month (both languages)
FIELDS = [("physics", "physicist", "the behaviour of light in crystals"),
          ("chemistry", "chemist", "a cheaper way to produce fertiliser"),
          ("biology", "biologist", "the migration of river fish"),
          ("mathematics", "mathematician", "a new method for solving large systems of equations"),
          ("astronomy", "astronomer", "a comet that returns every seventy-one years"),
          ("geology", "geologist", "the age of the rocks beneath the northern hills"),
          ("computer science", "computer scientist", "an early algorithm for compressing text"),
          ("medicine", "physician", "a vaccine against a common fever")]
POSITIVE = ["works perfectly", "is well made", "exceeded my expectations", "is easy to use",
            "looks great", "was worth every penny", "arrived quickly", "is very comfortable"]
NEGATIVE = ["stopped working after a week", "feels cheap", "was a waste of money",
            "is hard to use", "broke on the first day", "arrived damaged",
            "is very uncomfortable", "is much louder than advertised"]


def _en_facts(rng: random.Random) -> dict:
    """One consistent set of facts for a document (dict literal: evaluated, and drawn, in order)."""
    female = rng.random() < 0.5
    city, city2 = _two(rng, CITIES)
    (ind, suffix), (ind2, _) = _two(rng, INDUSTRIES)
    field, profession, work = rng.choice(FIELDS)
    founded, born, rail = rng.randint(1100, 1750), rng.randint(1820, 1950), rng.randint(1840, 1900)
    matches, g2 = rng.randint(5, 12), rng.randint(0, 3)
    (ing1, dish), (ing2, _) = _two(rng, VEGETABLES)
    month = rng.randrange(12)
    return dict(
        city=city, city2=city2, region=rng.choice(REGIONS), river=rng.choice(RIVERS), industry=ind,
        industry2=ind2, feature=rng.choice(FEATURES), month=MONTHS[month], weekday=rng.choice(WEEKDAYS),
        pop=rng.randint(8, 900) * 1000 + rng.randint(0, 999), area=rng.randint(20, 600), founded=founded,
        charter=founded + rng.randint(20, 90), event_year=founded + rng.randint(100, 250),
        census=rng.randint(2001, 2021), rail_year=rail, boom_year=rail + rng.randint(20, 50),
        hill=rng.choice(LAST), height=rng.randint(40, 900), rain=rng.randint(300, 1500),
        dist=rng.randint(15, 400), temp=MONTH_TEMP[month] + rng.randint(-4, 4), unemp=rng.randint(3, 14),
        items=rng.randint(2, 90) * 1000, stadium=rng.randint(1920, 2010), schools=rng.randint(4, 60),
        uyear=rng.randint(1850, 1990), students=rng.randint(3, 40) * 1000, bridge=rng.randint(1880, 2015),
        company=rng.choice(["Blue", "North", "Silver", "Bright", "Iron", "Green", "Summit", "Atlas"]) + " " + suffix,
        cyear=rng.randint(1900, 2015), staff=rng.randint(40, 9000), visitors=rng.randint(2, 90) * 1000,
        name=rng.choice(FIRST_F if female else FIRST_M) + " " + rng.choice(LAST),
        name2=rng.choice(FIRST_F + FIRST_M) + " " + rng.choice(LAST),
        he="she" if female else "he", his="her" if female else "his", him="her" if female else "him",
        born=born, grad=born + 22, disc=born + rng.randint(28, 45), prize=born + rng.randint(50, 60),
        died=born + rng.randint(62, 92), siblings=rng.randint(2, 7), parent_job=rng.choice(JOBS),
        field=field, profession=profession, work=work, papers=rng.randint(20, 300),
        product=rng.choice(PRODUCTS), n=rng.randint(2, 9), k=rng.randint(3, 12),
        g1=g2 + rng.randint(1, 3), g2=g2, wins=rng.randint(1, matches), matches=matches,
        crowd=rng.randint(2, 40) * 1000, pct=rng.randint(2, 40), profit=rng.randint(3, 900),
        jobs=rng.randint(5, 80) * 10, price=rng.randint(40, 200), ing1=ing1, ing2=ing2, ing3=rng.choice(EXTRAS),
        dish=dish + rng.choice([" soup", " stew", " pie", " tart"]), minutes=rng.randint(5, 45),
        hours=rng.randint(1, 7),
        quarter=rng.choice(["first", "second", "third", "fourth"]),
        job=rng.choice(JOBS), color=rng.choice(COLORS), food=rng.choice(FOODS),
    )


WIKI_CITY = [
    ["{city} is a [small|mid-sized|large|historic] city in {region}, on the banks of the {river} River.",
     "As of the {census} census, the city had a population of {pop:,}.",
     "It covers an area of {area} square kilometres.",
     "It is [best known|known|widely known] for its {feature} and its {industry} industry.",
     "Its name [comes from|is derived from] an old word for a [ford|hill|harbour|meadow]."],
    ["The [town|settlement] was founded in {founded} by [fishermen|monks|merchants|farmers] from {city2}.",
     "By {charter} it had its own market and a town council.",
     "It grew [quickly|steadily] as a centre of the {industry} trade.",
     "In {event_year}, a [fire|flood|storm] destroyed [much|part] of the old town.",
     "The old town was rebuilt over the following decade.",
     "The railway reached {city} in {rail_year}, connecting it with {city2}.",
     "The population doubled between {rail_year} and {boom_year}."],
    ["{city} lies {dist} kilometres from {city2}.",
     "The {river} River divides the city into an old northern part and a newer southern part.",
     "The highest point is {hill} Hill, {height} metres above sea level.",
     "The climate is [mild and wet|warm and dry|cold in winter and warm in summer|windy and cool].",
     "The city receives about {rain} millimetres of rain a year.",
     "The average temperature in {month} is {temp} degrees Celsius."],
    ["The largest employer in {city} is {company}, a {industry} company founded in {cyear}.",
     "{company} employs about {staff:,} people.",
     "Other important sectors include {industry2} and retail.",
     "Unemployment stood at {unemp} percent in {census}.",
     "Many residents commute to {city2} for work."],
    ["{city} has {schools} schools.",
     "The University of {city} was founded in {uyear} and has about {students:,} students.",
     "A bridge over the {river} River opened in {bridge}.",
     "Direct trains run from {city} to {city2}, a journey of about {hours} hours."],
    ["The city hosts an annual festival every {month}, which attracts about {visitors:,} visitors.",
     "The {feature} is the most visited place in {city}.",
     "The {city} Museum of {industry2} History holds more than {items:,} objects.",
     "The local football club, {city} United, plays at a stadium built in {stadium}.",
     "Many visitors also walk along the {river} River to the old market."],
]
WIKI_PERSON = [
    ["{name} ({born}\u2013{died}) was a {profession} known for [work on|research on|the study of] {work}.",
     "{he} is [remembered|often remembered] as one of the founders of modern {field} in {region}."],
    ["{name} was born in {city} in {born}, the [eldest|youngest|second] of {siblings} children of a {parent_job}.",
     "As a child, {he} [loved reading about|was fascinated by] {field}.",
     "{he} studied {field} at the University of {city2} and graduated in {grad}.",
     "{his} first teacher was the {profession} {name2}."],
    ["In {disc}, {he} published {his} best-known paper on {work}.",
     "The paper was [at first ignored|widely discussed|quickly accepted] by other scientists.",
     "{he} later taught at the University of {city}, where {he} trained more than {k} doctoral students.",
     "Over {his} career {he} wrote about {papers} papers."],
    ["In {prize}, {he} received the national prize for {field}.",
     "{name} died in {city2} in {died}.",
     "A street in {city} is named after {him}."],
]
WIKI_COMPANY = [
    ["{company} is a {industry} company headquartered in {city}, {region}.",
     "It was founded in {cyear} by {name} and employs about {staff:,} people."],
    ["The company began as a small workshop near the {river} River.",
     "[Within a few years|Soon] it opened a second site in {city2}.",
     "Its best-selling product is a {product}."],
    ["In its latest annual report, {company} reported a profit of {profit} million dollars.",
     "Sales rose by {pct} percent, mostly in {region}.",
     "The chief executive is {name2}."],
    ["In the [1990s|2000s|2010s] {company} [expanded abroad|bought smaller firms|built a new office in {city}].",
     "It opened a research centre in {city2} and plans to hire about {jobs} more people there.",
     "Its {product} won a design award in {census}."],
    ["{company} sponsors {city} United, the local football club.",
     "Every {month} it holds an open day at its {city} site, which attracts about {crowd:,} visitors."],
]
TOPICS = [  # (label, headline, sentences) - shared by Pile-CC news and the MIP topic/summary tasks
    ("sports", "{city} United beat {city2} Rovers",
     ["{city} United beat {city2} Rovers {g1}-{g2} on {weekday}.",
      "The striker {name} scored twice in the second half.",
      "[More than|About] {crowd:,} fans watched the match.",
      "{city2} Rovers [started well|had more of the ball in the first half], but could not hold on.",
      "{city} United have now won {wins} of their last {matches} matches.",
      "The coach, {name2}, praised the defence after the game.",
      "The next home match is in {month}."]),
    ("science", "New study on {work}",
     ["Researchers at the University of {city} have studied {work}.",
      "The team, led by the {profession} {name}, published the results in a journal of {field}.",
      "The study took {n} years and involved {k} scientists.",
      "[Earlier studies|Previous work] had used much smaller samples.",
      "{name} said the results [were surprising|confirmed an old idea|opened new questions].",
      "The project was paid for by the city of {city} and by {company}.",
      "Other researchers said the method could be used in {field} teaching."]),
    ("business", "{company} reports {quarter}-quarter profit",
     ["{company} reported a profit of {profit} million dollars for the {quarter} quarter.",
      "Sales of its {product} rose by {pct} percent.",
      "The company employs about {staff:,} people, most of them in {city}.",
      "The chief executive, {name}, said the company would open a new factory in {city2}.",
      "The new factory will create about {jobs} jobs.",
      "Analysts had expected a [smaller|weaker] result.",
      "Shares in {company} rose on {weekday}."]),
    ("travel", "Visiting {city} in {month}",
     ["{city} is a good place to visit in {month}.",
      "The old town is famous for its {feature}.",
      "Trains from {city2} take about {hours} hours.",
      "Most visitors stay for {n} days and walk along the {river} River.",
      "[Small hotels|Guest houses] near the {feature} cost about {price} dollars a night.",
      "Do not miss the local {dish}, which is served in most restaurants.",
      "In {month} the average temperature is about {temp} degrees."]),
    ("food", "A recipe for {dish}",
     ["{dish} is a traditional dish from {city}.",
      "To make it, you need {ing1}, {ing2} and a little {ing3}.",
      "Cook the {ing1} for {minutes} minutes over a medium heat.",
      "Then add the {ing2} and stir [gently|well].",
      "[My grandmother|A friend from {city}|A cook in {city}] taught me this recipe.",
      "It tastes even better the next day.",
      "This recipe serves {n} people."]),
]


# ---------------------------------------------------------------- English documents (Pile subsets)
def _review(rng: random.Random, f: dict, positive: bool) -> str:
    p1, p2 = _two(rng, POSITIVE if positive else NEGATIVE)
    end = ("[I would recommend it to a friend.|I would buy it again.|Five stars.]" if positive
           else "[I would not recommend it.|I am sending it back.|One star.]")
    return _fill(rng, "I bought this {product} {n} weeks ago. It %s and it %s. %s" % (p1, p2, end), f)


def _pile_cc(rng, f):
    kind = rng.randrange(4)
    if kind == 0:  # news story: headline and a topic's sentences in short paragraphs
        _, headline, sents = rng.choice(TOPICS[:4])
        body = _para(rng, sents, f, keep=0.85).replace(". ", ".\n\n", rng.randint(0, 2))
        quote = _para(rng, ["\"[We are very pleased|This is good news for {city}|It has been a long year],\" "
                            "said {name2}, [a local resident|a spokesperson for the city council|"
                            "who has lived in {city} for {k} years].",
                            "[More details are expected in {month}.|The council will discuss the matter in {month}.]",
                            "[Readers can send questions to the newsroom.|This story was updated on {weekday}.]"], f)
        return _fill(rng, headline, f) + "\n\n" + body + "\n\n" + quote
    if kind == 1:  # a product page with a few reviews; the average matches the ratings
        ratings, reviews = [], []
        for _ in range(rng.randint(2, 6)):
            positive = rng.random() < 0.5
            ratings.append(rng.randint(4, 5) if positive else rng.randint(1, 2))
            reviews.append("%s %s. (%d/5)\n%s" % (rng.choice(FIRST_F + FIRST_M), rng.choice(LAST)[0], ratings[-1],
                                                  _review(rng, dict(f, n=rng.randint(1, 9)), positive)))
        head = _fill(rng, "{product} by {company}\n\n", f) + "Average rating: %.1f out of 5 (%d reviews)\n\n" % (
            sum(ratings) / len(ratings), len(ratings))
        return head + "\n\n".join(reviews)
    if kind == 2:  # recipe
        steps = ["Wash and chop the {ing1} and the {ing2}.", "Melt a little butter in a pan.",
                 "Add the {ing1} and stir.",
                 "Cook for {minutes} minutes over a medium heat.", "Add the {ing2} and cook for a few more minutes.",
                 "Stir in the {ing3}, season with salt and serve warm."]
        lines = [_fill(rng, "How to make {dish}", f), "",
                 _fill(rng, "Ingredients: {ing1}, {ing2}, {ing3}, butter, salt.", f), ""]
        lines += ["%d. %s" % (i + 1, _fill(rng, s, f)) for i, s in enumerate(steps)]
        return "\n".join(lines + ["", _para(rng, TOPICS[4][2][4:], f)])
    travel, food = TOPICS[3][2], TOPICS[4][2]  # travel blog post
    intro = _fill(rng, "[{n} days in {city}|Our trip to {city}|A weekend in {city}]\n\n"
                       "Last {month} we spent {n} days in {city}. ", f)
    eat = food[:2] + ["We ate it [twice|every evening|on our last night] and [loved it|want to cook it at home]."]
    return intro + _para(rng, travel, f) + "\n\n" + _para(rng, eat, f) + "\n\n" + _fill(
        rng, "[We will certainly come back.|Next year we want to see {city2} as well.|Would we go again? Yes.]", f)


def _wikipedia(rng, f):
    title, sections = rng.choice([(f["city"], WIKI_CITY), (f["name"], WIKI_PERSON), (f["company"], WIKI_COMPANY)])
    return title + "\n\n" + _sections(rng, sections, f, least=2)


def _github(rng, f):
    noun = rng.choice(NOUNS)
    xs = [rng.randint(1, 50) for _ in range(rng.randint(3, 6))]
    limit = rng.randint(10, 40)
    mod = "%s_%s" % (f["company"].split()[0].lower(), noun)
    kind = rng.randrange(3)
    if kind == 0:
        lines = ['"""Small helpers for %s (part of %s)."""' % (noun, f["company"]), "",
                 "", "def total_%s(values):" % noun, '    """Return the sum of a list of %s."""' % noun,
                 "    result = 0", "    for value in values:", "        result += value", "    return result", "",
                 "", "def largest_%s(values):" % noun, '    """Return the largest of the %s, or None."""' % noun,
                 "    if not values:", "        return None", "    return max(values)", "",
                 "", "def count_above(values, limit):", '    """How many values are greater than limit."""',
                 "    return sum(1 for value in values if value > limit)", "",
                 "", "def test_%s():" % noun, "    data = %r" % xs,
                 "    assert total_%s(data) == %d" % (noun, sum(xs)),
                 "    assert largest_%s(data) == %d" % (noun, max(xs)),
                 "    assert count_above(data, %d) == %d" % (limit, sum(1 for x in xs if x > limit))]
    elif kind == 1:
        cities = [(rng.choice(CITIES), rng.randint(8, 900) * 1000, rng.randint(1100, 1750))
                  for _ in range(rng.randint(2, 5))]
        lines = ["from dataclasses import dataclass", "", "", "@dataclass", "class City:",
                 '    """A city with its population and founding year."""', "", "    name: str",
                 "    population: int", "    founded: int", "", "    def age(self, year: int) -> int:",
                 "        return year - self.founded", "", "", "CITIES = ["]
        lines += ['    City("%s", %d, %d),' % c for c in cities]
        lines += ["]", "", "", "def test_age():", '    assert City("%s", %d, %d).age(2000) == %d' % (
            cities[0] + (2000 - cities[0][2],))]
    else:
        lines = ["# %s" % mod, "", "%s is a tiny library for working with %s." % (mod, noun), "",
                 "## Installation", "", "    pip install %s" % mod.replace("_", "-"), "", "## Usage", "",
                 "```python", "from %s import total_%s" % (mod, noun),
                 "print(total_%s(%r))  # %d" % (noun, xs, sum(xs)), "```", "",
                 "## License", "", "MIT, copyright %s %s." % (f["cyear"], f["company"])]
    return "\n".join(lines) + "\n"


ARXIV_PROBLEMS = ["traffic forecasting", "protein folding", "machine translation", "image segmentation",
                  "weather prediction", "speech recognition", "anomaly detection", "code completion"]
ARXIV_METHODS = ["graph neural network", "transformer", "kernel method", "Bayesian model",
                 "sparse attention mechanism", "tree ensemble", "diffusion model", "recurrent network"]


def _arxiv(rng, f):
    base, gain = rng.randint(550, 900), rng.randint(3, 60)  # accuracy in tenths of a percent
    acr = rng.choice(["Fast", "Deep", "Robust", "Sparse", "Neural"]) + rng.choice(["Flow", "Net", "Mix", "Path"])
    g = dict(f, problem=rng.choice(ARXIV_PROBLEMS), method=rng.choice(ARXIV_METHODS), acr=acr,
             gain="%.1f" % (gain / 10), base="%.1f" % (base / 10), acc="%.1f" % ((base + gain) / 10),
             trick=rng.choice(["a small memory", "a learned gate", "a contrastive loss"]))
    title = _fill(rng, "Title: {acr}: [Efficient|Better|Scalable] {problem} with a {method}\n\nAbstract: ", g)
    parts = [title + _para(rng, [
        "We study {problem} with a {method}.",
        "Existing approaches [need large amounts of labelled data|do not scale to long inputs|are expensive to train].",
        "We propose {acr}, a [simple|lightweight|scalable] {method} for {problem}.",
        "On {n} benchmark datasets, {acr} improves accuracy by {gain} points over the strongest baseline.",
        "It also trains {hours} times faster.", "Code and data are publicly available."], g, keep=0.85)]
    for head, sents in [("1 Introduction", ["{problem} is an important problem in [machine learning|statistics].",
                                             "Early work by {name} and {name2} used hand-written rules.",
                                             "In this paper we show that a {method} can learn these rules from data."]),
                         ("2 Method", ["{acr} combines a {method} with {trick}.",
                                       "The {method} reads the input, and {trick} decides which parts matter.",
                                       "Training takes about {k} hours on one machine."]),
                         ("3 Experiments", ["We evaluate {acr} on {n} datasets.",
                                            "The best baseline reaches {base}% accuracy, and {acr} reaches {acc}%.",
                                            "Removing {trick} lowers the accuracy of {acr} to {base}% or less."])]:
        if rng.random() < 0.75:
            parts.append(head + "\n\n" + _para(rng, sents, g, keep=0.9))
    return "\n\n".join(parts)


SE_TASKS = [("sort a list of {noun} in reverse order", "sorted({noun}, reverse=True)"),
            ("remove duplicates from a list of {noun} but keep the order", "list(dict.fromkeys({noun}))"),
            ("count how often each value appears in a list of {noun}", "collections.Counter({noun})"),
            ("get the largest value in a list of {noun}", "max({noun})"),
            ("join a list of {noun} into one string", "\", \".join(str(x) for x in {noun})")]
NOUNS = "prices scores distances temperatures weights ages counts sizes".split()


def _stackexchange(rng, f):
    noun = rng.choice(NOUNS)
    task, answer = rng.choice(SE_TASKS)
    g = dict(f, noun=noun, task=task.format(noun=noun), answer=answer.format(noun=noun))
    text = _fill(rng, "Q: How do I {task} in Python?\n\nI have a list called {noun} and I want to {task}. "
                      "[I tried a for loop but it feels slow.|I am new to Python.|Is there a built-in way?]\n\n"
                      "A: [You can simply use|Use|The easiest way is]:\n\n    {answer}\n\n"
                      "[This works for any iterable.|Hope this helps.|It runs in one line.]", g)
    if rng.random() < 0.5:
        text += _fill(rng, "\n\nA: Note that `{answer}` does not change {noun} itself; it returns a new value. "
                           "[Assign it to a new name if you need it later.|Keep that in mind inside loops.]", g)
    return text


PILE_SUBSETS = [("Pile-CC", _pile_cc, 35), ("Wikipedia (en)", _wikipedia, 30), ("Github", _github, 12),
                ("ArXiv", _arxiv, 13), ("StackExchange", _stackexchange, 10)]


# ---------------------------------------------------------------- Chinese vocabulary and documents (WuDao)
CN_CITY_A, CN_CITY_B = list("青临安云江河南东西北长平宁华金玉龙凤白石"), list("川阳州山源门林海城水丘陵")
CN_PROVINCES = ["江南省", "北原省", "东海省", "西岭省", "中川省", "云岭省", "南湖省", "北岭省"]
CN_RIVERS = ["清江", "白河", "长水", "玉带河", "金沙河", "洛川河"]
CN_INDUSTRIES = [("纺织", "棉纱", "服装面料"), ("机械制造", "数控机床", "农业机械"), ("电子", "电路板", "传感器"),
                 ("新能源", "太阳能电池板", "储能电池"), ("医药", "疫苗", "中成药"), ("食品", "速冻食品", "乳制品"),
                 ("物流", "仓储服务", "冷链运输"), ("软件", "办公软件", "数据库系统"), ("通信", "光纤", "基站设备")]
CN_SURNAMES = list("王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗")
CN_GIVEN_F = ["芳", "娜", "敏", "静", "艳", "丽", "秀英", "海燕", "雨桐", "玉兰", "婷", "慧"]
CN_GIVEN_M = ["伟", "强", "磊", "军", "勇", "杰", "涛", "明", "超", "志强", "建国", "晓东", "文博"]
CN_FIELDS = [("物理学", "物理学家", "晶体中光的传播规律", "新材料研发"), ("化学", "化学家", "一种低成本合成化肥的方法", "农业生产"),
             ("生物学", "生物学家", "淡水鱼类的洄游规律", "环境保护"), ("数学", "数学家", "求解大型线性方程组的新方法", "工程计算"),
             ("天文学", "天文学家", "一颗周期为七十一年的彗星", "航天探测"), ("地质学", "地质学家", "北方山区岩层的形成年代", "矿产勘探"),
             ("计算机科学", "计算机科学家", "一种高效的文本压缩算法", "信息存储"), ("医学", "医学家", "一种预防常见热病的疫苗", "疾病预防")]
CN_CLIMATES = [  # name, description, winter low, summer high, yearly rain (mm)
    ("亚热带季风", "冬季温和少雨，夏季炎热多雨", 2, 36, 1400), ("温带季风", "冬季寒冷干燥，夏季温暖湿润", -12, 33, 650),
    ("温带大陆性", "降水稀少，昼夜温差较大", -18, 35, 250), ("海洋性", "全年湿润，气温变化小", 4, 27, 1100)]
CN_FOODS = ["酱牛肉", "米粉", "烧饼", "鱼汤", "糯米糕", "豆腐脑", "炸酱面", "羊肉汤"]
CN_WEATHER = ["晴", "多云", "阴", "小雨", "中雨", "雷阵雨", "晴转多云", "多云转阴"]


def _cn_facts(rng: random.Random) -> dict:
    female = rng.random() < 0.5
    (a1, b1), (a2, b2) = _two(rng, [(a, b) for a in CN_CITY_A for b in CN_CITY_B])
    ind, prod1, prod2 = rng.choice(CN_INDUSTRIES)
    field, profession, work, app = rng.choice(CN_FIELDS)
    climate, note, winter, summer, rain = rng.choice(CN_CLIMATES)
    winter, summer = winter + rng.randint(-3, 3), summer + rng.randint(-2, 2)
    food1, food2 = _two(rng, CN_FOODS)
    born, month, cyear = rng.randint(1880, 1950), rng.randint(1, 12), rng.randint(1950, 2005)
    lo = MONTH_TEMP[month - 1] + rng.randint(-5, 1)
    lo2 = lo + rng.randint(-3, 3)
    revenue, share, year = rng.randint(12, 900), rng.randint(30, 80), rng.randint(2015, 2023)
    dist = rng.randint(40, 900)
    return dict(
        city=a1 + b1 + "市", short=a1 + b1, city2=a2 + b2 + "市", province=rng.choice(CN_PROVINCES),
        river=rng.choice(CN_RIVERS), area=rng.randint(800, 16000), pop=rng.randint(30, 900),
        districts=rng.randint(2, 8), counties=rng.randint(1, 9), district=rng.choice(["城关", "东城", "新华", "中山", "江滨"]),
        nickname=rng.choice(["山水之城", "千年古城", "鱼米之乡", "花园城市"]), dynasty=rng.choice(["汉代", "唐代", "宋代", "元代", "明代"]),
        oldname=rng.choice(CN_CITY_A) + rng.choice(["州", "城", "邑"]), city_year=rng.randint(1949, 1995),
        mountain=rng.choice(CN_CITY_A) + rng.choice(["峰", "岭", "顶"]), height=rng.randint(300, 2800),
        climate=climate, climate_note=note, winter=winter, summer=summer,
        temp=(winter + summer) // 2 + rng.randint(-2, 2), rain=rain + rng.randint(-10, 10) * 10,
        dist=dist, hours=dist // 150 + 1,
        rail=rng.choice(["京南", "沿江", "东西", "南北", "海川"]), trains=rng.randint(6, 60),
        airport=rng.randint(1960, 2015), routes=rng.randint(8, 90), univs=rng.randint(2, 30),
        schools=rng.randint(20, 200),
        uyear=rng.randint(1902, 1985), students=rng.randint(8, 60) * 1000, relics=rng.randint(3, 90) * 1000,
        ind=ind, prod1=prod1, prod2=prod2, cyear=cyear, cyear2=cyear + rng.randint(1, 5),
        cyear3=cyear + rng.randint(8, 15),
        ipo=cyear + rng.randint(10, 18), company=rng.choice(["华信", "远航", "星河", "天宇", "金桥", "博创", "恒通", "新元"]) + ind +
        rng.choice(["有限公司", "股份有限公司"]), founders=rng.randint(3, 30), staff=rng.randint(200, 30000),
        rd_pct=rng.randint(8, 40), provinces=rng.randint(10, 31), countries=rng.randint(5, 60),
        patents=rng.randint(20, 900),
        pct=rng.randint(10, 45), gdp=rng.randint(300, 9000), growth=rng.randint(2, 12), revenue=revenue,
        profit=revenue * rng.randint(4, 20) // 100 + 1, share=share, rev1=revenue * share // 100, rd=revenue // 10 + 1,
        year=year, year2=year + 1, energy=rng.randint(2, 9), food1=food1, food2=food2, fest_month=rng.randint(3, 11),
        festival=rng.choice(["灯会", "花节", "龙舟节", "美食节", "音乐节"]), visitors=rng.randint(5, 300), nth=rng.randint(2, 30),
        person=rng.choice(CN_SURNAMES) + rng.choice(CN_GIVEN_F if female else CN_GIVEN_M),
        sex="女" if female else "男", he="她" if female else "他",
        born=born, grad=born + 22, phd=born + 27, disc=born + rng.randint(30, 45), prize=born + rng.randint(50, 60),
        died=born + rng.randint(62, 95), field=field, profession=profession, work=work, papers=rng.randint(6, 40) * 10,
        books=rng.randint(2, 12), students_n=rng.randint(10, 90), month=month, day=rng.randint(1, 28),
        weather=rng.choice(CN_WEATHER), weather2=rng.choice(CN_WEATHER), weather3=rng.choice(CN_WEATHER),
        lo=lo, hi=lo + rng.randint(4, 11), lo2=lo2, hi2=lo2 + rng.randint(4, 10),
        wind=rng.choice(["东北风", "西南风", "北风", "南风"]),
        wlevel=rng.randint(2, 5), years=rng.randint(3, 12), members=rng.randint(6, 40), rise=rng.randint(3, 9),
        houses=rng.randint(200, 9000), days=rng.randint(3, 20), event_year=rng.randint(1850, 1945),
        invest=rng.randint(20, 400),
        app=app,
    )


CN_CITY = [
    ["{city}是{province}下辖的地级市，位于{river}[沿岸|南岸|北岸]，总面积约{area}平方公里，常住人口约{pop}万人。",
     "全市下辖{districts}个区和{counties}个县，市政府驻{district}区。", "{city}[素有|享有]“{nickname}”之称，是{province}重要的{ind}基地。",
     "{city}与{city2}相邻，两地相距约{dist}公里。"],
    ["{city}历史悠久，始建于{dynasty}，古称{oldname}。", "{dynasty}时期，{oldname}已是{river}流域的重要集镇，商旅往来频繁。",
     "近代以来，这里逐渐成为{province}重要的{ind}产业中心。",
     "{event_year}年，{city}遭遇了一场特大洪水，老城区大部分建筑被毁，此后用了约十年时间才重建完成。",
     "{city_year}年，{oldname}正式设市，定名为{city}。"],
    ["{city}地势[西高东低|北高南低|南高北低]，境内以[平原|丘陵|山地]为主，最高峰{mountain}海拔{height}米。",
     "{river}自[西向东|北向南]流经全境，是当地最重要的河流。",
     "{city}属{climate}气候，{climate_note}，年平均气温约{temp}摄氏度，年降水量约{rain}毫米。",
     "[春秋两季|秋季]气候宜人，是[旅游|出行]的最佳季节。"],
    ["{city}的支柱产业包括{ind}、物流和旅游，其中{ind}产业产值约占全市工业总产值的{pct}%。",
     "{company}是当地最大的企业，成立于{cyear}年，员工约{staff}人，主要产品有{prod1}和{prod2}。",
     "{year}年，全市地区生产总值达到{gdp}亿元，比上年增长{growth}%。",
     "近年来，{city}[大力发展|积极培育]数字经济和现代服务业，城乡居民收入稳步提高。"],
    ["{city}交通便利，{rail}铁路和多条高速公路在此交会。", "{city}火车站每天开行前往{city2}的列车{trains}对，最快约{hours}小时即可到达。",
     "{city}机场于{airport}年建成通航，目前已开通国内航线{routes}条。"],
    ["{city}共有高等院校{univs}所，普通中学{schools}所。", "{short}大学创办于{uyear}年，是当地规模最大的高等院校，在校学生约{students}人。",
     "{short}大学的{field}专业在全国享有较高声誉。"],
    ["{city}的特色美食有{food1}和{food2}。", "每年{fest_month}月举办的{short}{festival}吸引了约{visitors}万名游客。",
     "主要景点有{river}风光带、{short}古城墙和{mountain}风景区。", "{city}博物馆收藏文物{relics}余件，其中不少与当地的{ind}历史有关。"],
]
CN_COMPANY = [
    ["{company}成立于{cyear}年，总部位于{province}{city}，是一家主要从事{ind}产品研发、生产和销售的企业。",
     "公司由{person}创办，现有员工约{staff}人，其中研发人员约占{rd_pct}%。", "公司于{ipo}年在证券交易所上市。"],
    ["创立之初，公司只是{city}[郊区|城东|城西]的一家小工厂，只有{founders}名员工。",
     "{cyear2}年，公司推出了第一款{prod1}产品，[迅速打开了市场|很快在省内站稳了脚跟]。", "{cyear3}年，公司在{city2}建成了第二个生产基地。"],
    ["公司的主要产品包括{prod1}和{prod2}，销往全国{provinces}个省份以及海外{countries}个国家和地区。", "公司拥有专利{patents}项，参与制定了多项行业标准。"],
    ["{year}年，公司营业收入约{revenue}亿元，同比增长{growth}%，净利润约{profit}亿元。", "公司董事长{person}表示，未来将继续加大在{prod1}领域的研发投入。",
     "公司每年向{short}大学捐资设立奖学金，资助家庭困难的学生。"],
]
CN_PERSON = [
    ["{person}（{born}年—{died}年），{sex}，{province}{city}人，著名{profession}。", "{he}长期从事{field}研究，是我国{field}领域的开拓者之一。"],
    ["{person}出生于一个[普通农民|小学教师|手工业者|商人]家庭，自幼[聪明好学|喜爱读书|对自然现象充满好奇]。",
     "{he}{grad}年毕业于{short}大学{field}系，{phd}年获得博士学位。", "毕业后，{he}留校任教，先后担任讲师、副教授和教授。"],
    ["{disc}年，{he}[首次|率先]提出了{work}，这一成果[被认为是|被视为]{field}领域的重要突破。",
     "{he}一生发表论文{papers}余篇，出版专著{books}部，培养了{students_n}名研究生。", "{prize}年，{he}获得国家自然科学奖。"],
    ["晚年的{person}仍然坚持[工作|指导学生|著书立说]，常对学生说：“做学问要耐得住寂寞。”",
     "{died}年，{person}在{city2}逝世，终年{age}岁。", "为纪念{he}，{short}大学设立了以{he}的名字命名的奖学金。"],
]
CN_NEWS = [
    ("{city}气象台发布{month}月{day}日天气预报",
     ["{city}气象台{month}月{day}日发布天气预报：今天白天{weather}，夜间{weather2}，{wind}{wlevel}级，最高气温{hi}℃，最低气温{lo}℃。",
      "明天{weather3}，最低气温{lo2}℃，最高气温{hi2}℃。", "今天空气质量[优|良]，[适宜|较适宜]户外活动。",
      "气象专家提醒，近期昼夜温差较大，市民外出时请注意[增减衣物|防寒保暖|携带雨具]。",
      "受[冷空气|暖湿气流]影响，预计未来三天{province}大部分地区将出现[降温|降雨|大风]天气。"]),
    ("{company}发布{year}年年度报告 营业收入增长{growth}%",
     ["{month}月{day}日，{company}发布{year}年年度报告。", "报告显示，公司全年实现营业收入{revenue}亿元，同比增长{growth}%，净利润{profit}亿元。",
      "其中，{prod1}业务收入{rev1}亿元，占总收入的{share}%左右。", "截至{year}年底，公司员工总数约{staff}人，全年研发投入{rd}亿元。",
      "公司董事长{person}表示，{year2}年将继续加大在{prod1}领域的研发投入，并计划在{city2}新建一座工厂。",
      "业内人士认为，随着市场需求回暖，{ind}行业有望保持[稳定|较快]增长。"]),
    ("{short}大学研究团队在{field}领域取得新进展",
     ["近日，{short}大学{person}教授带领的研究团队在{field}领域取得重要进展。", "该团队经过{years}年的研究，[发现了|揭示了]{work}。",
      "{person}介绍说，以往的研究[主要依靠|大多依赖]人工观察，效率较低。", "这次团队采用了新的实验方法，[大大提高了|显著提升了]研究效率。",
      "相关论文已发表在国际学术期刊上。", "{person}表示，这项研究有望在{app}等方面得到应用。",
      "据介绍，团队共有{members}名成员，其中大部分是青年科研人员。"]),
    ("{event_year}年{city}大洪水",
     ["{event_year}年{city}大洪水是当地历史上最严重的自然灾害之一。", "当年{month}月，{river}上游连降暴雨，水位在几天内上涨了{rise}米。",
      "据地方志记载，洪水持续了{days}天，共有{houses}间房屋倒塌。", "灾后，{province}各地纷纷捐款捐物，帮助灾民重建家园。",
      "此后，当地修建了{river}大堤，再未发生类似灾害。", "{city}博物馆至今仍保存着当年的照片和文献资料。"]),
    ("第{nth}届{short}{festival}开幕",
     ["{month}月{day}日，第{nth}届{short}{festival}在{city}开幕。", "本届活动为期{days}天，预计将吸引游客约{visitors}万人次。",
      "活动期间，游客可以品尝{food1}、{food2}等地方特色美食。", "{city}文化和旅游局负责人表示，希望通过节庆活动带动当地旅游业发展。"]),
    ("{short}至{city2}高速公路正式通车",
     ["{month}月{day}日，{city}至{city2}高速公路正式通车。", "该公路全长{dist}公里，总投资约{invest}亿元，历时{years}年建成。",
      "通车后，两地之间的行车时间大大缩短。", "沿线群众表示，今后去{city2}[看病|上学|做生意]方便多了。"]),
]
CN_QA = [
    ("{city}的冬天冷吗？", ["{city}属{climate}气候，{climate_note}。", "冬季最低气温一般在{winter}℃左右，夏季最高气温可达{summer}℃。",
                        "[建议|最好]冬天去的时候带上厚外套。"]),
    ("{company}是一家什么样的公司？", ["{company}成立于{cyear}年，总部在{city}，主要生产{prod1}和{prod2}。",
                                 "公司现有员工约{staff}人，{year}年营业收入约{revenue}亿元。", "总的来说，是{ind}行业里比较有实力的企业。"]),
    ("{person}有哪些主要成就？", ["{person}是著名{profession}，{disc}年提出了{work}。", "{he}一生发表论文{papers}余篇，培养了{students_n}名研究生。",
                            "{prize}年，{he}获得国家自然科学奖。"]),
    ("去{city}旅游有什么推荐？", ["推荐去{river}边走走，{city}的老城区也很有特色。", "当地美食一定要尝尝{food1}和{food2}。",
                           "如果{fest_month}月去，还能赶上{short}{festival}。", "从{city2}坐火车过去大约需要{hours}小时。"]),
    ("{city}有哪些大学？", ["{city}共有高等院校{univs}所。", "其中最有名的是{short}大学，创办于{uyear}年，在校学生约{students}人。",
                       "{short}大学的{field}专业比较强。"]),
]


def _wudao_record(rng: random.Random, idx: int) -> dict:
    f = _cn_facts(rng)
    f["age"] = f["died"] - f["born"]
    kind = rng.choices(["百科", "新闻", "问答"], weights=[60, 30, 10])[0]
    if kind == "百科":
        title, sections = rng.choice([("{city}", CN_CITY), ("{company}", CN_COMPANY), ("{person}", CN_PERSON)])
        content = _sections(rng, sections, f, sep="", para_sep="\n", least=2)
    elif kind == "新闻":
        title, sents = rng.choice(CN_NEWS)
        content = _para(rng, sents, f, keep=0.85, sep="")
    else:
        title, sents = rng.choice(CN_QA)
        content = "答：" + _para(rng, sents, f, keep=0.85, sep="")
    return {"id": idx, "uniqueKey": "%032x" % rng.getrandbits(128), "titleUkey": "%032x" % rng.getrandbits(128),
            "dataType": kind, "title": _fill(rng, title, f), "content": content}


# ---------------------------------------------------------------- MIP (instruction) examples
NLI_FACTS = [("{name} lives in %s.", "city", CITIES), ("{name} works as a %s.", "job", JOBS),
             ("{name} drives a %s car.", "color", COLORS), ("{name}'s favourite food is %s.", "food", FOODS)]
QA_PARAGRAPH = ["{city} is a [small|mid-sized|large|historic] city in {region}, on the banks of the {river} River.",
                "As of the {census} census, the city had a population of {pop:,}.",
                "The [town|settlement] was founded in {founded} by [fishermen|monks|merchants|farmers] from {city2}.",
                "The largest employer in {city} is {company}, a {industry} company founded in {cyear}."]
QA_QUESTIONS = [("In which year was {city} founded?", "{founded}"), ("What is the population of {city}?", "{pop:,}"),
                ("On which river does {city} lie?", "the {river} River"),
                ("Which company is the largest employer in {city}?", "{company}"),
                ("In which region is {city}?", "{region}"), ("Where did the founders of {city} come from?", "{city2}")]
MIP_TASKS = ["sentiment_review", "nli_yes_no", "extractive_qa", "topic_classification",
             "arithmetic_word_problem", "summarization_lead", "number_comparison"]


def _mip_example(rng: random.Random) -> dict:
    """One prompt with its correct answer; several wordings per task, as in promptsource."""
    f = _en_facts(rng)
    task = rng.choice(MIP_TASKS)
    if task == "sentiment_review":
        positive = rng.random() < 0.5
        review = _review(rng, f, positive)
        inputs = _fill(rng, "[Review|Customer review]: %s\n[Is this review positive or negative?|"
                            "Did the customer like the product? Answer positive or negative.]" % review, f)
        target = "positive" if positive else "negative"
    elif task == "nli_yes_no":
        order = list(NLI_FACTS)
        rng.shuffle(order)
        premise = " ".join(_fill(rng, t % f[key], f) for t, key, _ in order)
        t, key, pool = rng.choice(NLI_FACTS)
        value = f[key] if rng.random() < 0.5 else rng.choice([v for v in pool if v != f[key]])
        hypothesis = _fill(rng, t % value, f)
        question = _fill(rng, "[Does the premise entail the hypothesis?|Is the hypothesis true given the premise?|"
                              "Can we conclude the hypothesis?] Answer yes or no.", f)
        inputs = "Premise: %s\nHypothesis: %s\n%s" % (premise, hypothesis, question)
        target = "yes" if value == f[key] else "no"
    elif task == "extractive_qa":
        question, answer = rng.choice(QA_QUESTIONS)
        inputs = "%s\n\nQuestion: %s\nAnswer:" % (_para(rng, QA_PARAGRAPH, f, keep=1.0), _fill(rng, question, f))
        target = _fill(rng, answer, f, cap=False)
    elif task == "topic_classification":
        label, _, sents = rng.choice(TOPICS)
        text, options = _para(rng, sents, f, keep=0.5), ", ".join(t[0] for t in TOPICS)
        inputs = _fill(rng, "[Text|Article]: %s\n[Which topic is this text about?|What is the topic?] "
                            "Options: %s.\nAnswer:" % (text, options), f)
        target = label
    elif task == "arithmetic_word_problem":
        item = rng.choice(["apples", "books", "pencils", "stamps", "marbles", "cards"])
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        if rng.random() < 0.5:
            c = rng.randint(1, a + b)
            problem = "%s has %d %s. %s buys %d more and gives away %d. How many %s does %s have now?" % (
                f["name"], a, item, f["he"].capitalize(), b, c, item, f["name"])
            answer = a + b - c
        else:
            a, b = a % 12 + 2, b % 15 + 2
            problem = "%s packs %d boxes with %d %s in each box. How many %s are there in total?" % (
                f["name"], a, b, item, item)
            answer = a * b
        inputs = rng.choice(["%s", "Solve the following problem.\n%s\nAnswer:",
                             "Question: %s\nGive the answer as a number."]) % problem
        target = str(answer)
    elif task == "summarization_lead":
        _, _, sents = rng.choice(TOPICS)
        target = _fill(rng, sents[0], f)
        article = target + " " + _para(rng, sents[1:], f, keep=0.8)
        inputs = rng.choice(["Summarize the following article in one sentence.\n\n%s", "%s\n\nTL;DR:",
                             "Article:\n%s\n\nWhat is the main point of this article?"]) % article
    else:
        x, y = _two(rng, range(10, 1000))
        inputs = _fill(rng, "[Which number is larger|Which is the bigger number], %d or %d?" % (x, y), f)
        target = str(max(x, y))
    return {"inputs": inputs, "targets": target, "task": task}


# ---------------------------------------------------------------- writing
def generate(out_dir: Path, seed: int = 0, scale: float = 1.0) -> dict:
    """Write the three demo files into ``out_dir``; return ``{file: {"documents", "bytes", ...}}``."""
    import zstandard  # imported here so that importing this module needs only the standard library

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def count(n: int) -> int:
        return max(1, round(n * scale))

    rng = random.Random(seed * 1000 + 1)  # one stream per file: each file depends only on seed and scale
    names, funcs, weights = zip(*PILE_SUBSETS)
    lines = []
    for _ in range(count(PILE_DOCS)):
        i = rng.choices(range(len(names)), weights=weights)[0]
        lines.append(json.dumps({"text": funcs[i](rng, _en_facts(rng)), "meta": {"pile_set_name": names[i]}}))
    raw = ("\n".join(lines) + "\n").encode("utf-8")
    packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0, write_checksum=True).compress(raw)
    (out_dir / PILE_FILE).write_bytes(packed)

    rng = random.Random(seed * 1000 + 2)
    records = [_wudao_record(rng, i) for i in range(count(WUDAO_DOCS))]
    wudao = json.dumps(records, ensure_ascii=False, indent=1).encode("utf-8")
    (out_dir / WUDAO_FILE).write_bytes(wudao)

    rng = random.Random(seed * 1000 + 3)
    examples = [_mip_example(rng) for _ in range(count(MIP_EXAMPLES))]
    mip = "".join(json.dumps(e) + "\n" for e in examples).encode("utf-8")
    (out_dir / MIP_FILE).write_bytes(mip)

    return {PILE_FILE: {"documents": len(lines), "bytes": len(packed), "uncompressed_bytes": len(raw)},
            WUDAO_FILE: {"documents": len(records), "bytes": len(wudao)},
            MIP_FILE: {"documents": len(examples), "bytes": len(mip)}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.demo_corpus",
                                     description="Write the synthetic bilingual demo corpus (Pile, WuDao, MIP).")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the number of documents per file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    stats = generate(args.out_dir, seed=args.seed, scale=args.scale)
    print(json.dumps(stats, indent=1))
    print("generated in %.2f s" % (time.perf_counter() - start), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
