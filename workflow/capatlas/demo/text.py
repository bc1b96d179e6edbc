"""Vocabularies and document templates for the synthetic demo corpus.

Everything here was written for this project. Each WebOrganizer topic gets
a small vocabulary and each format a template, so a document's words say
its topic and its layout says its format, as in real web text. The words
that carry the planted benchmark answers (reactions, physical outcomes and
the pseudo-word entities) are kept out of every filler vocabulary, so the
only place a model can learn them is the planted documents.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from capatlas.taxonomy import FORMAT_SLUGS, TOPIC_SLUGS


@dataclass(frozen=True)
class TopicVocab:
    nouns: tuple[str, ...]
    verbs: tuple[str, ...]  # base form: frames only use them after "to", "can", "will"...
    adjectives: tuple[str, ...]


def _vocab(nouns: str, verbs: str, adjectives: str) -> TopicVocab:
    split = lambda text: tuple(w.strip() for w in text.split(",") if w.strip())  # noqa: E731
    return TopicVocab(split(nouns), split(verbs), split(adjectives))


TOPIC_VOCAB: dict[str, TopicVocab] = {
    "adult_content": _vocab(
        "romance, date night, nightclub, partner, candlelight, massage, lingerie, flirt, bedroom, attraction, velvet robe, late show",
        "flirt, kiss, whisper, dance, cuddle, seduce, undress, embrace",
        "intimate, private, sultry, mature, daring, explicit, discreet, steamy",
    ),
    "art_and_design": _vocab(
        "canvas, palette, sketch, gallery, sculpture, brush, poster, typeface, mural, studio, portrait, collage",
        "paint, sketch, frame, carve, design, exhibit, shade, compose",
        "vivid, abstract, minimal, bold, textured, pastel, ornate, graphic",
    ),
    "software_development": _vocab(
        "function, compiler, repository, branch, variable, unit test, pull request, debugger, module, syntax, class, runtime",
        "compile, refactor, deploy, debug, merge, commit, import, profile",
        "recursive, static, async, verbose, modular, typed, legacy, concurrent",
    ),
    "crime_and_law": _vocab(
        "court, judge, verdict, lawyer, suspect, warrant, statute, appeal, jury, testimony, detective, prosecutor",
        "sue, arrest, testify, appeal, prosecute, convict, investigate, rule",
        "criminal, legal, accused, civil, federal, judicial, unlawful, sworn",
    ),
    "education_and_jobs": _vocab(
        "classroom, syllabus, resume, internship, lecture, campus, diploma, tutor, career, interview, semester, homework",
        "teach, enroll, graduate, hire, study, apply, mentor, train",
        "academic, entry-level, full-time, remote, certified, junior, senior, vocational",
    ),
    "electronics_and_hardware": _vocab(
        "circuit board, resistor, capacitor, motherboard, soldering iron, transistor, cable, chip, monitor, keyboard, battery pack, sensor",
        "solder, wire, plug, install, upgrade, calibrate, assemble, power",
        "digital, analog, wireless, compact, overclocked, modular, portable, rugged",
    ),
    "entertainment": _vocab(
        "movie, celebrity, premiere, sitcom, trailer, concert, red carpet, streaming service, soundtrack, episode, award show, comedian",
        "stream, premiere, binge, review, cast, perform, host, broadcast",
        "blockbuster, viral, animated, live, trending, hilarious, dramatic, iconic",
    ),
    "social_life": _vocab(
        "friendship, neighbor, party, gathering, roommate, coworker, weekend plan, group chat, dinner invitation, hangout, family visit, reunion",
        "invite, chat, visit, celebrate, meet, hang out, host, gossip",
        "friendly, social, casual, close, polite, neighborly, lively, warm",
    ),
    "fashion_and_beauty": _vocab(
        "outfit, lipstick, runway, handbag, hairstyle, skincare routine, jacket, perfume, sneaker, nail polish, wardrobe, makeover",
        "style, wear, accessorize, moisturize, tailor, match, layer, curl",
        "chic, trendy, glossy, elegant, vintage, seasonal, flattering, sleek",
    ),
    "finance_and_business": _vocab(
        "invoice, budget, stock, dividend, startup, revenue, mortgage, portfolio, quarterly report, merger, investor, balance sheet",
        "invest, audit, budget, acquire, trade, finance, hedge, forecast",
        "fiscal, profitable, corporate, annual, liquid, risky, quarterly, taxable",
    ),
    "food_and_dining": _vocab(
        "recipe, skillet, pasta, bakery, dessert, menu, restaurant, oven, spice rub, sandwich, salad, waiter",
        "bake, roast, season, chop, simmer, grill, taste, serve",
        "savory, crispy, spicy, tender, homemade, fresh, creamy, tangy",
    ),
    "games": _vocab(
        "console, quest, level, controller, boss fight, multiplayer lobby, dice, board game, speedrun, character build, loot, leaderboard",
        "play, level up, respawn, craft, unlock, grind, roll, equip",
        "competitive, casual, pixelated, open-world, tactical, co-op, retro, ranked",
    ),
    "health": _vocab(
        "symptom, clinic, vaccine, nurse, diagnosis, therapy, blood pressure, prescription, immune system, diet plan, checkup, patient",
        "diagnose, treat, prescribe, vaccinate, recover, exercise, monitor, heal",
        "chronic, clinical, healthy, medical, acute, preventive, mental, nutritional",
    ),
    "history_and_geography": _vocab(
        "empire, border, river valley, dynasty, map, archive, treaty, mountain range, colony, ancient city, coastline, battlefield",
        "map, explore, conquer, settle, trade, document, rule, migrate",
        "ancient, medieval, coastal, colonial, historic, northern, imperial, remote",
    ),
    "home_and_hobbies": _vocab(
        "garden, knitting needle, birdhouse, workshop, quilt, houseplant, fishing rod, backyard, paint roller, scrapbook, aquarium, shelf",
        "plant, knit, decorate, build, repair, collect, prune, organize",
        "cozy, handmade, rustic, seasonal, tidy, outdoor, homemade, colorful",
    ),
    "industrial": _vocab(
        "factory, conveyor belt, forklift, pipeline, turbine, assembly line, warehouse, crane, valve, steel beam, excavator, boiler",
        "manufacture, weld, inspect, ship, assemble, operate, maintain, load",
        "heavy, automated, hydraulic, industrial, certified, durable, large-scale, bulk",
    ),
    "literature": _vocab(
        "novel, poem, chapter, narrator, author, manuscript, stanza, protagonist, anthology, library, sonnet, paperback",
        "write, narrate, publish, recite, translate, edit, read, rhyme",
        "poetic, classic, literary, epic, lyrical, tragic, fictional, gothic",
    ),
    "politics": _vocab(
        "senator, ballot, campaign, policy, election, parliament member, governor, bill, debate, mayor, coalition, referendum",
        "vote, campaign, legislate, veto, elect, debate, govern, lobby",
        "partisan, electoral, liberal, conservative, legislative, municipal, bipartisan, political",
    ),
    "religion": _vocab(
        "temple, prayer, scripture, pilgrim, monk, chapel, sermon, ritual, congregation, altar, hymn, monastery",
        "pray, worship, preach, bless, fast, meditate, chant, believe",
        "sacred, holy, spiritual, devout, ancient, monastic, faithful, divine",
    ),
    "science_math_and_technology": _vocab(
        "equation, laboratory, hypothesis, telescope, molecule, theorem, experiment, microscope, dataset, algorithm, particle, graph",
        "measure, observe, calculate, prove, test, simulate, estimate, analyze",
        "scientific, empirical, theoretical, precise, quantum, statistical, numerical, experimental",
    ),
    "software": _vocab(
        "app, browser, spreadsheet, update, plugin, dashboard, password manager, operating system, download, settings menu, toolbar, cloud drive",
        "download, install, sync, uninstall, configure, launch, back up, update",
        "free, open-source, cross-platform, premium, lightweight, default, beta, secure",
    ),
    "sports_and_fitness": _vocab(
        "marathon, coach, stadium, workout, treadmill, playoff, dumbbell, referee, training plan, yoga mat, goalkeeper, trophy",
        "train, sprint, lift, stretch, score, coach, jog, compete",
        "athletic, fit, professional, intense, varsity, aerobic, undefeated, muscular",
    ),
    "transportation": _vocab(
        "train station, highway, bus route, cargo ship, airport, bicycle lane, subway, truck, ferry, traffic light, railway, parking garage",
        "drive, commute, ship, fly, park, board, haul, navigate",
        "public, electric, rush-hour, freight, high-speed, urban, regional, commercial",
    ),
    "travel_and_tourism": _vocab(
        "hotel, passport, itinerary, beach resort, museum tour, suitcase, hostel, sightseeing trip, guidebook, souvenir, cruise, landmark",
        "book, explore, pack, tour, visit, wander, check in, sightsee",
        "exotic, scenic, budget, all-inclusive, touristy, tropical, historic, picturesque",
    ),
}

TIMES = ("week", "morning", "season", "year", "month", "weekend", "evening")
ADVERBS = ("quickly", "slowly", "carefully", "together", "again", "often", "well")
FILLER_NAMES = (
    "Alex", "Sam", "Jordan", "Taylor", "Morgan", "Casey", "Riley", "Jamie",
    "Avery", "Quinn", "Parker", "Rowan", "Drew", "Reese", "Skyler", "Emery",
)
CITIES = ("Springfield", "Riverton", "Lakewood", "Fairview", "Brookside", "Hillcrest", "Oakdale", "Maplewood")

FILLER_FRAMES = (
    "The {a} {n} can {v} the {n2}.",
    "Many people {v} a {a} {n} every {t}.",
    "Our {n} needs a {a} {n2} to {v} {adv}.",
    "A good {n} will {v} any {a} {n2}.",
    "They often {v} the {n} before the {n2}.",
    "Every {a} {n} should {v} with a {n2}.",
    "We plan to {v} the {a} {n} this {t}.",
    "It is hard to {v} a {n} without a {a} {n2}.",
    "The {n} and the {n2} both {v} {adv}.",
    "Nobody wants to {v} a {a} {n} twice.",
    "You may {v} the {n} near the {a} {n2}.",
    "Most {a} {n} fans {v} {adv} each {t}.",
)


class Writer:
    """Filler text in one topic's vocabulary, drawn from one seeded stream."""

    def __init__(self, rng: random.Random, topic: str):
        self.rng = rng
        self.vocab = TOPIC_VOCAB[topic]

    def noun(self) -> str:
        return self.rng.choice(self.vocab.nouns)

    def verb(self) -> str:
        return self.rng.choice(self.vocab.verbs)

    def adjective(self) -> str:
        return self.rng.choice(self.vocab.adjectives)

    def name(self) -> str:
        return self.rng.choice(FILLER_NAMES)

    def number(self, low: int = 2, high: int = 999) -> int:
        return self.rng.randint(low, high)

    def title(self) -> str:
        return f"{self.adjective()} {self.noun()}".title()

    def sentence(self) -> str:
        frame = self.rng.choice(FILLER_FRAMES)
        nouns = self.rng.sample(self.vocab.nouns, 2)
        text = frame.format(
            n=nouns[0],
            n2=nouns[1],
            v=self.verb(),
            a=self.adjective(),
            t=self.rng.choice(TIMES),
            adv=self.rng.choice(ADVERBS),
        )
        text = re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)
        return text[0].upper() + text[1:]

    def sentences(self, n_words: int) -> list[str]:
        out: list[str] = []
        words = 0
        while words < n_words:
            sentence = self.sentence()
            out.append(sentence)
            words += len(sentence.split())
        return out

    def short_text(self) -> str:
        # Four to six words: below any sensible min-token filter, whatever the tokenizer.
        return self.rng.choice(
            (
                f"{self.title()}.",
                f"{self.noun().capitalize()} for sale.",
                f"Ticket #{self.number()}: {self.noun()}.",
                f"See the {self.adjective()} {self.noun()}.",
                f"{self.name()} liked this {self.noun()}.",
            )
        )


# --------------------------------------------------------------------- formats
# A template lays out body sentences (filler, or the planted fact sentences)
# in a format's characteristic shape. It may add its own chrome (titles,
# ticket numbers, list markers) but never drops or rewrites a body sentence.

Template = Callable[[Writer, Sequence[str]], str]
SENTENCES_PER_TURN = 3


def _chunks(body: Sequence[str], n: int) -> list[list[str]]:
    n = max(1, min(n, len(body)))
    size = -(-len(body) // n)
    return [list(body[i : i + size]) for i in range(0, len(body), size)]


def _academic(w: Writer, body: Sequence[str]) -> str:
    parts = _chunks(body, 3)
    sections = ["Abstract.", "Introduction.", "Results."]
    text = f"{w.title()}: A Study of the {w.noun().title()}\n"
    for head, part in zip(sections, parts):
        text += f"{head} {' '.join(part)}\n"
    return text + f"References: [1] {w.name()} et al. ({w.number(1990, 2024)})."


def _turns(body: Sequence[str]) -> list[str]:
    # Several sentences per turn, comment, answer or step: a format's chrome
    # marks its layout without splitting every sentence from the next.
    return [" ".join(part) for part in _chunks(body, -(-len(body) // SENTENCES_PER_TURN))]


def _listing(w: Writer, body: Sequence[str]) -> str:
    lines = [f"Contents of the {w.noun()} section"]
    lines += [f"{i}. {s}" for i, s in enumerate(_turns(body), start=1)]
    return "\n".join(lines + [f"Next page: {w.title()}"])


def _creative(w: Writer, body: Sequence[str]) -> str:
    return f"The {w.adjective()} {w.noun()}\nThe night was quiet. {' '.join(body)} And so the story ended."


def _support(w: Writer, body: Sequence[str]) -> str:
    lines = [f"Ticket #{w.number(1000, 99999)}: problem with my {w.noun()}"]
    for i, s in enumerate(_turns(body)):
        lines.append(("Customer: " if i % 2 == 0 else "Agent: ") + s)
    return "\n".join(lines + ["Status: resolved. Thank you for contacting support."])


def _comments(w: Writer, body: Sequence[str]) -> str:
    turns = _turns(body)
    lines = [f"{len(turns)} comments"]
    for s in turns:
        lines.append(f"{w.name().lower()}{w.number(1, 99)} wrote: {s}")
    return "\n".join(lines)


def _faq(w: Writer, body: Sequence[str]) -> str:
    lines = ["Frequently Asked Questions"]
    for s in _turns(body):
        lines.append(f"Question: What should I know about the {w.noun()}?\nAnswer: {s}")
    return "\n".join(lines)


def _truncated(w: Writer, body: Sequence[str]) -> str:
    tail = w.sentence().split()
    return " ".join(body) + " " + " ".join(tail[: max(1, len(tail) // 2)])


def _knowledge(w: Writer, body: Sequence[str]) -> str:
    topic = w.title()
    return f"{topic}\nFrom the encyclopedia. {' '.join(body)}\nSee also: {w.title()}, {w.title()}."


def _legal(w: Writer, body: Sequence[str]) -> str:
    return (
        f"LEGAL NOTICE {w.number(100, 999)}. "
        + " ".join(body)
        + " This notice is governed by the applicable terms. All rights reserved."
    )


def _listicle(w: Writer, body: Sequence[str]) -> str:
    turns = _turns(body)
    lines = [f"{len(turns)} things to know about the {w.noun()}"]
    lines += [f"{i}. {s}" for i, s in enumerate(turns, start=1)]
    return "\n".join(lines)


def _news(w: Writer, body: Sequence[str]) -> str:
    city = w.rng.choice(CITIES).upper()
    return f"{w.title()} Draws Attention\n{city} (Demo Wire) - {' '.join(body)} Officials said more details would follow."


def _nonfiction(w: Writer, body: Sequence[str]) -> str:
    parts = _chunks(body, 2)
    return "\n\n".join(" ".join(p) for p in parts) + f"\n\nThis essay is about the {w.noun()}."


def _about_org(w: Writer, body: Sequence[str]) -> str:
    return (
        f"About Us\nThe {w.title()} Group was founded in {w.number(1950, 2020)}. "
        + " ".join(body)
        + f" Our mission is to {w.verb()} every {w.noun()}."
    )


def _news_org(w: Writer, body: Sequence[str]) -> str:
    return f"Announcement from the {w.title()} Society\nWe are pleased to share this update. {' '.join(body)} Join us next {w.rng.choice(TIMES)}."


def _about_pers(w: Writer, body: Sequence[str]) -> str:
    return f"Hi, I am {w.name()}. I love every {w.adjective()} {w.noun()}. {' '.join(body)} Thanks for visiting my page."


def _blog(w: Writer, body: Sequence[str]) -> str:
    return f"Posted by {w.name()} on day {w.number(1, 365)}\nToday I want to write about the {w.noun()}. {' '.join(body)} See you in the next post!"


def _product(w: Writer, body: Sequence[str]) -> str:
    lines = [f"{w.title()} - Price: ${w.number(5, 500)}.99", "Features:"]
    lines += [f"* {s}" for s in _turns(body)]
    return "\n".join(lines + ["Add to cart. Free shipping."])


def _qa_forum(w: Writer, body: Sequence[str]) -> str:
    turns = _turns(body)
    head, rest = turns[0], turns[1:]
    lines = [f"Question from user{w.number(1, 9999)}: {head}"]
    lines += [f"Answer: {s}" for s in rest]
    return "\n".join(lines + [f"Best answer chosen by {w.name()}."])


def _spam(w: Writer, body: Sequence[str]) -> str:
    return f"BUY NOW!!! Cheap {w.noun()} deals! {' '.join(body)} CLICK HERE for a limited offer!!!"


def _structured(w: Writer, body: Sequence[str]) -> str:
    lines = [f"record: {w.number(1, 9999)} | type: {w.noun()} | grade: {w.adjective()}"]
    lines += [f"note_{i}: {s}" for i, s in enumerate(_turns(body), start=1)]
    return "\n".join(lines)


def _documentation(w: Writer, body: Sequence[str]) -> str:
    parts = _chunks(body, 2)
    heads = ["## Overview", "## Usage"]
    text = f"# {w.title()} manual\n"
    for head, part in zip(heads, parts):
        text += f"{head}\n{' '.join(part)}\n"
    return text + f"Note: version {w.number(1, 9)}.{w.number(0, 9)}."


def _transcript(w: Writer, body: Sequence[str]) -> str:
    guest = w.name().upper()
    lines = [f"TRANSCRIPT: episode {w.number(1, 300)}"]
    for i, s in enumerate(_turns(body)):
        lines.append(("HOST: " if i % 2 == 0 else f"{guest}: ") + s)
    return "\n".join(lines)


def _tutorial(w: Writer, body: Sequence[str]) -> str:
    lines = [f"How to {w.verb()} the {w.noun()}"]
    lines += [f"Step {i}: {s}" for i, s in enumerate(_turns(body), start=1)]
    return "\n".join(lines + ["That is all you need to do."])


def _review(w: Writer, body: Sequence[str]) -> str:
    return f"Rating: {w.number(1, 5)} out of 5 stars\nReviewed by {w.name()}. {' '.join(body)} Would recommend to a friend."


FORMAT_TEMPLATES: dict[str, Template] = {
    "academic_writing": _academic,
    "content_listing": _listing,
    "creative_writing": _creative,
    "customer_support": _support,
    "comment_section": _comments,
    "faq": _faq,
    "truncated": _truncated,
    "knowledge_article": _knowledge,
    "legal_notices": _legal,
    "listicle": _listicle,
    "news_article": _news,
    "nonfiction_writing": _nonfiction,
    "about_org": _about_org,
    "news_org": _news_org,
    "about_pers": _about_pers,
    "personal_blog": _blog,
    "product_page": _product,
    "q_a_forum": _qa_forum,
    "spam_ads": _spam,
    "structured_data": _structured,
    "documentation": _documentation,
    "audio_transcript": _transcript,
    "tutorial": _tutorial,
    "user_review": _review,
}

assert tuple(sorted(TOPIC_VOCAB)) == tuple(sorted(TOPIC_SLUGS))
assert tuple(sorted(FORMAT_TEMPLATES)) == tuple(sorted(FORMAT_SLUGS))


# ---------------------------------------------------------- planted material
# Reasoning patterns: a situation maps to an outcome whatever the person or
# setting, so items can use names and settings the documents never pair
# with it. Knowledge facts: pseudo-word entities with pseudo-word attributes.


@dataclass(frozen=True)
class SocialPattern:
    action: str  # past tense, follows a name: "Kai won the spelling contest"
    reaction: str  # one adjective, the answer


SOCIAL_PATTERNS: tuple[SocialPattern, ...] = (
    SocialPattern("won the spelling contest", "proud"),
    SocialPattern("forgot a friend's birthday", "guilty"),
    SocialPattern("received a surprise gift", "grateful"),
    SocialPattern("tripped in front of the whole class", "embarrassed"),
    SocialPattern("was left out of the group photo", "lonely"),
    SocialPattern("finished a very long hike", "exhausted"),
    SocialPattern("was lied to by a close friend", "betrayed"),
    SocialPattern("heard a strange noise in the dark house", "scared"),
    SocialPattern("got the dream job offer", "thrilled"),
    SocialPattern("waited two hours for a late bus", "impatient"),
    SocialPattern("broke a neighbor's window by accident", "ashamed"),
    SocialPattern("moved to a new city all alone", "anxious"),
    SocialPattern("was blamed for someone else's mistake", "furious"),
    SocialPattern("got a failing grade on the final test", "disappointed"),
    SocialPattern("saw an old friend after many years", "overjoyed"),
    SocialPattern("lost a favorite ring at the beach", "upset"),
)

SOCIAL_DOC_NAMES = (
    "Mia", "Noah", "Liam", "Emma", "Ava", "Ethan", "Zoe", "Lucas",
    "Chloe", "Owen", "Nora", "Caleb", "Ruby", "Felix", "Iris", "Hugo",
)
# Items use names the model knows from filler text but never saw in a
# planted pattern: the action -> reaction rule must carry over to them.
SOCIAL_ITEM_NAMES = FILLER_NAMES
SOCIAL_SETTINGS = (
    "last week", "on Monday", "at the community center", "during the holidays",
    "after school", "at work today", "over the summer", "in front of everyone",
)
SOCIAL_QUESTIONS = ("How would {name} feel afterwards?", "How would {name} feel as a result?")

# Pattern sentences as they appear in planted documents; the last one reads
# like an item with its answer, so attribution can match queries to it.
SOCIAL_DOC_FRAMES = (
    "When {name} {action}, {name} felt {reaction}.",
    "{name} {action} {setting} and felt {reaction} afterwards.",
    "{name} {action} {setting}. {question}\nAnswer: {reaction}.",
)


@dataclass(frozen=True)
class PhysicalRule:
    material: str  # "wax"
    active: str  # third person, takes the object: "heats {m}"
    passive: str  # "is heated"
    outcome: str  # the answer, one verb: "melts" (sentences say "it melts")


PHYSICAL_RULES: tuple[PhysicalRule, ...] = (
    # One-word outcomes and a verb of its own per rule, so an item can only be
    # answered through its material and cause, not a shared surface cue.
    PhysicalRule("wax", "heats some {m}", "is heated", "melts"),
    PhysicalRule("pond water", "cools the {m} far below zero", "is cooled far below zero", "freezes"),
    PhysicalRule("iron nail", "leaves an {m} out in the rain", "is left out in the rain", "rusts"),
    PhysicalRule("thin filament", "passes a strong current through a {m}", "carries a strong current", "glows"),
    PhysicalRule("granite pebble", "drops a {m} into a lake", "is dropped into a lake", "sinks"),
    PhysicalRule("cork stopper", "places a {m} in a full bathtub", "is placed in a full bathtub", "floats"),
    PhysicalRule("balloon air", "warms the {m}", "is warmed", "expands"),
    PhysicalRule("sugar cube", "stirs a {m} into warm tea", "is stirred into warm tea", "dissolves"),
    PhysicalRule("glass jar", "throws a {m} against a brick wall", "is thrown against a brick wall", "shatters"),
    PhysicalRule("bean seed", "plants a {m} in moist soil", "is planted in moist soil", "sprouts"),
    PhysicalRule("soap bubble", "pokes a {m} with a pin", "is poked with a pin", "pops"),
    PhysicalRule("steel spring", "squeezes a {m} and lets go", "is squeezed and released", "recoils"),
    PhysicalRule("clay pot", "bakes a {m} in a kiln", "is baked in a kiln", "hardens"),
    PhysicalRule("puddle", "exposes a {m} to strong sunlight", "is exposed to strong sunlight", "evaporates"),
    PhysicalRule("plastic comb", "rubs a {m} on a wool sweater", "is rubbed on a wool sweater", "crackles"),
    PhysicalRule("silver bell", "strikes a {m} with a hammer", "is struck with a hammer", "rings"),
)

ARC_AGENTS = ("A student", "A teacher", "A scientist", "A farmer", "A child", "An engineer", "A camper", "A cook")
ARC_SETTINGS = ("during a class demonstration", "in a school lab", "at home", "on a field trip", "for a science fair project", "outdoors")
ARC_QUESTIONS = (
    "What will most likely happen to the {m}?",
    "Which best describes what happens to the {m}?",
)
# Rule sentences as they appear in planted documents; the last one reads like
# an item with its answer, so attribution can match queries to it.
ARC_DOC_FRAMES = (
    "When {m_the} {passive}, it {outcome}.",
    "If someone {active}, it {outcome}.",
    "{agent} {active} {setting}, and it {outcome}.",
    "{agent} {active} {setting}. {question}\nAnswer: {outcome}.",
)


@dataclass(frozen=True)
class Relation:
    """One kind of knowledge fact, tied to an MMLU subject."""

    subject: str
    statements: tuple[str, ...]  # {e}, {a}
    questions: tuple[str, ...]  # {e}


SOCIAL_RELATIONS: tuple[Relation, ...] = (
    Relation(
        "high_school_government_and_politics",
        ("The parliament of {e} is called the {a}.", "In {e}, the parliament is called the {a}."),
        (
            "What is the parliament of {e} called?",
            "What is the name of the parliament of {e}?",
            "What do the people of {e} call their parliament?",
            "The parliament of {e} has which name?",
        ),
    ),
    Relation(
        "high_school_macroeconomics",
        ("The currency of {e} is the {a}.", "In {e}, people pay with the {a}."),
        (
            "What is the currency of {e}?",
            "Which currency is used in {e}?",
            "What money do people use in {e}?",
            "In {e}, which currency do people pay with?",
        ),
    ),
    Relation(
        "high_school_geography",
        ("The capital of {e} is {a}.", "The capital city of {e} is {a}."),
        (
            "What is the capital of {e}?",
            "Which city is the capital of {e}?",
            "What city serves as the capital of {e}?",
            "The capital of {e} is which city?",
        ),
    ),
)

STEM_RELATIONS: tuple[Relation, ...] = (
    Relation(
        "astronomy",
        ("The moon {e} orbits the planet {a}.", "The moon {e} circles the planet {a}."),
        (
            "Which planet does the moon {e} orbit?",
            "The moon {e} orbits which planet?",
            "Around which planet does the moon {e} travel?",
            "What planet is the moon {e} a satellite of?",
        ),
    ),
    Relation(
        "high_school_chemistry",
        ("The element {e} is found in the mineral {a}.", "Chemists extract the element {e} from the mineral {a}."),
        (
            "In which mineral is the element {e} found?",
            "From which mineral is the element {e} extracted?",
            "Which mineral contains the element {e}?",
            "The element {e} occurs in which mineral?",
        ),
    ),
    Relation(
        "college_physics",
        ("The unit of {e} is the {a}.", "Physicists measure {e} in units called the {a}."),
        (
            "What is the unit of {e}?",
            "In which unit is {e} measured?",
            "Which unit do physicists use for {e}?",
            "The quantity {e} is measured in which unit?",
        ),
    ),
)

# Pseudo-words: syllables that never make a real filler word, so a planted
# entity or answer is unmistakably its own token sequence.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "gl", "th", "sh", "qu")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "oa")
_CODAS = ("", "", "n", "r", "l", "s", "th", "x", "m", "k")


def pseudo_word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)]
    return "".join(parts).capitalize()


# Distractors: answers of the same kind that no document ever states. With
# other items' answers as distractors, an item is only answerable once its
# own fact is memorised, and a memorised fact leaves its benchmark's queries
# pushing against each other's answers (each query's residual probability
# sits on its siblings' answers), which cancels the benchmark-wide
# attribution signal. With decoys the model needs only what the planted
# documents teach as a whole, and can stay short of memorising them.
DECOY_REACTIONS = (
    "bored", "sleepy", "hungry", "calm", "curious", "confused", "jealous", "relieved",
    "nervous", "annoyed", "amused", "shy", "puzzled", "restless", "gloomy", "cheerful",
)
DECOY_OUTCOMES = (
    "explodes", "wilts", "hums", "rots", "shrinks", "glitters", "bends", "smokes",
    "fades", "wobbles", "bounces", "tilts", "drips", "flickers", "swells", "crumbles",
)


def filler_words() -> set[str]:
    """Every word the filler vocabularies, frames and templates can emit."""
    words: set[str] = set()
    chunks: list[str] = list(TIMES) + list(ADVERBS) + list(FILLER_NAMES) + list(CITIES) + list(FILLER_FRAMES)
    for vocab in TOPIC_VOCAB.values():
        chunks += list(vocab.nouns) + list(vocab.verbs) + list(vocab.adjectives)
    for chunk in chunks:
        words.update(re.findall(r"[a-z]+", chunk.lower()))
    return words


def answer_words() -> set[str]:
    """Words that carry a planted answer; none may appear in filler text."""
    words = {p.reaction for p in SOCIAL_PATTERNS}
    for rule in PHYSICAL_RULES:
        words.add(rule.outcome)
    return words


def decoy_words() -> set[str]:
    """Words that carry a decoy answer; none may appear in any document."""
    return set(DECOY_REACTIONS) | set(DECOY_OUTCOMES)
