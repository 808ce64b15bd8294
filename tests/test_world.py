"""The world: its templates parse back to what made them, and its writers know every style."""

import random

import pytest

from rlhf_lab import world


def test_every_template_parses_back_to_its_family_and_slots():
    rng = random.Random(1)
    for family, template, _ in world.TEMPLATES:
        for _ in range(5):
            prompt = world.make_prompt(family, template, world.slot_values(family, template, rng))
            parsed = world.parse_prompt(prompt.text)
            assert parsed == prompt


def test_unknown_style_is_a_clear_error():
    with pytest.raises(ValueError, match="valid styles"):
        world.respond(world.sample_prompt(random.Random(0)), "sarcastic", random.Random(0))
