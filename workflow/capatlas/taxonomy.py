"""WebOrganizer topic x format taxonomy (Wettig et al. 2025).

Ids are the class indices of the WebOrganizer classifiers; a bin id is
``topic_id * 24 + format_id``. Labels arrive as ids, display names or slugs
(the study's released matrix uses slugs), so every reader resolves through
`resolve_topic` / `resolve_format`.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass

from capatlas.errors import CapatlasError

TOPICS: tuple[tuple[str, str], ...] = (
    ("Adult Content", "adult_content"),
    ("Art & Design", "art_and_design"),
    ("Software Development", "software_development"),
    ("Crime & Law", "crime_and_law"),
    ("Education & Jobs", "education_and_jobs"),
    ("Electronics & Hardware", "electronics_and_hardware"),
    ("Entertainment", "entertainment"),
    ("Social Life", "social_life"),
    ("Fashion & Beauty", "fashion_and_beauty"),
    ("Finance & Business", "finance_and_business"),
    ("Food & Dining", "food_and_dining"),
    ("Games", "games"),
    ("Health", "health"),
    ("History & Geography", "history_and_geography"),
    ("Home & Hobbies", "home_and_hobbies"),
    ("Industrial", "industrial"),
    ("Literature", "literature"),
    ("Politics", "politics"),
    ("Religion", "religion"),
    ("Science, Math & Technology", "science_math_and_technology"),
    ("Software", "software"),
    ("Sports & Fitness", "sports_and_fitness"),
    ("Transportation", "transportation"),
    ("Travel & Tourism", "travel_and_tourism"),
)

FORMATS: tuple[tuple[str, str], ...] = (
    ("Academic Writing", "academic_writing"),
    ("Content Listing", "content_listing"),
    ("Creative Writing", "creative_writing"),
    ("Customer Support Page", "customer_support"),
    ("Discussion Forum / Comment Section", "comment_section"),
    ("FAQs", "faq"),
    ("Incomplete Content", "truncated"),
    ("Knowledge Article", "knowledge_article"),
    ("Legal Notices", "legal_notices"),
    ("Listicle", "listicle"),
    ("News Article", "news_article"),
    ("Nonfiction Writing", "nonfiction_writing"),
    ("Organizational About Page", "about_org"),
    ("Organizational Announcement", "news_org"),
    ("Personal About Page", "about_pers"),
    ("Personal Blog", "personal_blog"),
    ("Product Page", "product_page"),
    ("Q&A Forum", "q_a_forum"),
    ("Spam / Ads", "spam_ads"),
    ("Structured Data", "structured_data"),
    ("Technical Writing", "documentation"),
    ("Transcript / Interview", "audio_transcript"),
    ("Tutorial / How-To Guide", "tutorial"),
    ("User Reviews", "user_review"),
)

N_TOPICS = len(TOPICS)
N_FORMATS = len(FORMATS)
N_BINS = N_TOPICS * N_FORMATS

TOPIC_SLUGS = tuple(slug for _, slug in TOPICS)
FORMAT_SLUGS = tuple(slug for _, slug in FORMATS)
TOPIC_NAMES = tuple(name for name, _ in TOPICS)
FORMAT_NAMES = tuple(name for name, _ in FORMATS)


def _normalise(label: str) -> str:
    # "Science, Math & Technology" and "science_math_and_technology" meet here.
    text = label.strip().lower().replace("&", " and ")
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def _lookup(entries: tuple[tuple[str, str], ...]) -> dict[str, int]:
    table: dict[str, int] = {}
    for idx, (name, slug) in enumerate(entries):
        table[_normalise(name)] = idx
        table[_normalise(slug)] = idx
    return table


_TOPIC_LOOKUP = _lookup(TOPICS)
_FORMAT_LOOKUP = _lookup(FORMATS)


@dataclass(frozen=True)
class Facet:
    """One labelling axis of the taxonomy: topic or format."""

    name: str
    entries: tuple[tuple[str, str], ...]
    lookup: dict[str, int]

    @property
    def size(self) -> int:
        return len(self.entries)

    def slug(self, idx: int) -> str:
        return self.entries[idx][1]

    def display(self, idx: int) -> str:
        return self.entries[idx][0]

    def resolve(self, value: object) -> int:
        """Map an id (int or digit string), display name or slug to an id."""
        if isinstance(value, bool) or value is None:
            raise CapatlasError(f"unknown {self.name} label {value!r}")
        if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
            # Parquet and pandas store integer labels as floats once a column has a gap: 3.0 is id 3.
            if not float(value).is_integer():
                raise CapatlasError(f"unknown {self.name} label {value!r}: ids are whole numbers 0-{self.size - 1}")
            return self.resolve(int(value))
        if isinstance(value, (int,)) or (hasattr(value, "__index__") and not isinstance(value, str)):
            idx = int(value)  # numpy integers too
            if 0 <= idx < self.size:
                return idx
            raise CapatlasError(
                f"unknown {self.name} label {value!r}: ids run from 0 to {self.size - 1}"
            )
        if isinstance(value, str):
            stripped = value.strip()
            if stripped.isdigit():
                return self.resolve(int(stripped))
            idx = self.lookup.get(_normalise(stripped))
            if idx is not None:
                return idx
        raise CapatlasError(
            f"unknown {self.name} label {value!r}: expected an id 0-{self.size - 1}, "
            f"a WebOrganizer name or a slug such as {self.entries[0][1]!r}"
        )


TOPIC = Facet("topic", TOPICS, _TOPIC_LOOKUP)
FORMAT = Facet("format", FORMATS, _FORMAT_LOOKUP)
FACETS = {"topic": TOPIC, "format": FORMAT}


def resolve_topic(value: object) -> int:
    return TOPIC.resolve(value)


def resolve_format(value: object) -> int:
    return FORMAT.resolve(value)


def bin_id(topic_id: int, format_id: int) -> int:
    return topic_id * N_FORMATS + format_id


def split_bin(bin_id_: int) -> tuple[int, int]:
    return divmod(int(bin_id_), N_FORMATS)


def bin_slug(bin_id_: int) -> str:
    topic_id, format_id = split_bin(bin_id_)
    return f"{TOPIC_SLUGS[topic_id]}__{FORMAT_SLUGS[format_id]}"
