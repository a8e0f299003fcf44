"""Random container names for `run` without --name (adjective_noun, as Docker does)."""

from __future__ import annotations

import random

ADJECTIVES = (
    "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry",
    "nimble", "proud", "quick", "quiet", "sharp", "silent", "steady", "swift", "tidy", "witty",
)
NOUNS = (
    "bridge", "packet", "socket", "router", "switch", "frame", "beacon", "relay", "signal",
    "channel", "harbor", "pier", "lantern", "compass", "anchor", "ferry", "canal", "delta",
)


def random_name(taken: set[str], rng: random.Random | None = None) -> str:
    rng = rng or random.Random()
    for _ in range(100):
        name = f"{rng.choice(ADJECTIVES)}_{rng.choice(NOUNS)}"
        if name not in taken:
            return name
    while True:
        name = f"{rng.choice(ADJECTIVES)}_{rng.choice(NOUNS)}{rng.randrange(1000)}"
        if name not in taken:
            return name
