"""A small NLI set the project generates itself, so the default run needs no download.

Templates in the spirit of HANS and NLI stress tests: hypernyms, negation, quantities, swapped
roles, added or dropped details, changed actions. It is synthetic and is labelled so wherever
it is reported; real SNLI results come from the SNLI configs.
"""

from __future__ import annotations

import random

ENTAILMENT, NEUTRAL, CONTRADICTION = 0, 1, 2

PEOPLE = [
    "man",
    "woman",
    "boy",
    "girl",
    "chef",
    "doctor",
    "teacher",
    "farmer",
    "student",
    "musician",
    "pilot",
    "nurse",
    "painter",
    "soldier",
    "dancer",
    "driver",
]
HYPERNYMS = {  # specific -> general
    "dog": "animal",
    "cat": "animal",
    "horse": "animal",
    "rose": "flower",
    "tulip": "flower",
    "car": "vehicle",
    "truck": "vehicle",
    "bicycle": "vehicle",
    "guitar": "instrument",
    "violin": "instrument",
    "apple": "fruit",
    "banana": "fruit",
    "hammer": "tool",
    "shirt": "garment",
}
VERB_OBJECT = [("holding", ""), ("looking at", ""), ("carrying", ""), ("painting", ""), ("washing", "")]
ACTIONS = [
    "sleeping",
    "running",
    "eating",
    "singing",
    "swimming",
    "reading",
    "cooking",
    "dancing",
    "laughing",
    "sitting",
    "climbing",
    "writing",
]
PLACES = ["park", "kitchen", "street", "beach", "garden", "station", "library", "market"]
DETAILS = [
    "for a friend",
    "before breakfast",
    "in the rain",
    "with great care",
    "for the first time",
    "while smiling",
    "after work",
]
NUMBERS = ["two", "three", "four", "five", "six", "seven"]
GROUPS = ["children", "dogs", "workers", "tourists", "players", "birds"]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _hypernym(rng: random.Random, label: int) -> tuple[str, str]:
    person = rng.choice(PEOPLE)
    verb, _ = rng.choice(VERB_OBJECT)
    specific = rng.choice(sorted(HYPERNYMS))
    general = HYPERNYMS[specific]
    place = rng.choice(PLACES)
    p = f"{_a(person).capitalize()} is {verb} {_a(specific)} in the {place}."
    if label == ENTAILMENT:
        return p, f"{_a(person).capitalize()} is {verb} {_a(general)}."
    if label == NEUTRAL:  # general -> specific is not implied
        p = f"{_a(person).capitalize()} is {verb} {_a(general)} in the {place}."
        return p, f"{_a(person).capitalize()} is {verb} {_a(specific)}."
    other = rng.choice([s for s in sorted(HYPERNYMS) if HYPERNYMS[s] != general])
    return p, f"{_a(person).capitalize()} is {verb} {_a(other)}, not {_a(specific)}."


def _negation(rng: random.Random, label: int) -> tuple[str, str]:
    person, action, place = rng.choice(PEOPLE), rng.choice(ACTIONS), rng.choice(PLACES)
    p = f"The {person} is {action} in the {place}."
    if label == CONTRADICTION:
        return p, f"The {person} is not {action}."
    if label == ENTAILMENT:
        return p, f"The {person} is {action}."
    return f"The {person} is not {action}.", f"The {person} is {rng.choice([a for a in ACTIONS if a != action])}."


def _quantity(rng: random.Random, label: int) -> tuple[str, str]:
    n = rng.randrange(len(NUMBERS))
    group, place = rng.choice(GROUPS), rng.choice(PLACES)
    p = f"{NUMBERS[n].capitalize()} {group} are in the {place}."
    if label == ENTAILMENT:
        return p, f"Some {group} are in the {place}."
    if label == CONTRADICTION:
        m = rng.choice([i for i in range(len(NUMBERS)) if i != n])
        return p, f"Exactly {NUMBERS[m]} {group} are in the {place}."
    return f"Some {group} are in the {place}.", f"{NUMBERS[n].capitalize()} {group} are in the {place}."


def _roles(rng: random.Random, label: int) -> tuple[str, str]:
    a, b = rng.sample(PEOPLE, 2)
    verb = rng.choice(["chasing", "helping", "calling", "following", "greeting", "watching"])
    p = f"The {a} is {verb} the {b}."
    if label == ENTAILMENT:
        return p, f"Someone is {verb} the {b}."
    if label == NEUTRAL:  # swapped roles: may or may not also hold
        return p, f"The {b} is {verb} the {a}."
    return p, f"Nobody is {verb} the {b}."


def _detail(rng: random.Random, label: int) -> tuple[str, str]:
    person, action, detail = rng.choice(PEOPLE), rng.choice(ACTIONS), rng.choice(DETAILS)
    if label == ENTAILMENT:  # dropping a detail keeps the meaning
        return f"The {person} is {action} {detail}.", f"The {person} is {action}."
    if label == NEUTRAL:  # adding one is not implied
        return f"The {person} is {action}.", f"The {person} is {action} {detail}."
    other = rng.choice([a for a in ACTIONS if a != action])
    return f"The {person} is {action} {detail}.", f"The {person} is {other} and not {action}."


TEMPLATES = [_hypernym, _negation, _quantity, _roles, _detail]
MAX_TRAIN_SIZE = 2000  # test avoids the first this-many train pairs, so train may not be larger


def generate(split: str, n: int, seed: int = 0) -> list[dict]:
    """`n` balanced examples; train and test are drawn from different seeds and never share a pair."""
    if split == "train" and n > MAX_TRAIN_SIZE:
        raise ValueError(
            f"at most {MAX_TRAIN_SIZE} synthetic train examples (more would overlap the test split); "
            "lower data.synthetic_train_size"
        )
    rng = random.Random(f"hpcnli-synthetic-{split}-{seed}")
    avoid = set()
    if split == "test":
        avoid = {(r["premise"], r["hypothesis"]) for r in generate("train", MAX_TRAIN_SIZE, seed)}
    rows: list[dict] = []
    seen = set()
    i = 0
    while len(rows) < n:
        if i > 50 * n + 1000:
            raise ValueError(f"cannot generate {n} distinct synthetic examples; lower data.synthetic_*_size")
        label = len(rows) % 3  # by rows kept, not tries, so a skipped duplicate keeps labels balanced
        template = TEMPLATES[(i // 3) % len(TEMPLATES)]
        i += 1
        premise, hypothesis = template(rng, label)
        key = (premise, hypothesis)
        if key in seen or key in avoid:
            continue
        seen.add(key)
        rows.append(
            {
                "id": f"synthetic-{split}-{len(rows):05d}",
                "premise": premise,
                "hypothesis": hypothesis,
                "label": label,
                "template": template.__name__[1:],
            }
        )
    return rows
