"""profiles.py: which profiles are offered, choosing one, and the spawn-page form."""

from __future__ import annotations

import re
import time
import types

import pytest

from migrating_spawner.checkpoint import checkpoint_time, new_checkpoint_id
from migrating_spawner.profiles import (
    DEFAULT_PROFILES,
    ProfileError,
    available_profiles,
    choose_profile,
    options_from_form,
    render_form,
)
from migrating_spawner.spawner import MigratingSpawner

PROFILES = [
    {"slug": "small", "display_name": "Small", "description": "1 CPU"},
    {"slug": "big", "display_name": "Big", "description": "8 CPUs", "default": True},
    {"slug": "rstudio", "display_name": "RStudio", "requires": "rserver"},
]


def which_only(*installed):
    return lambda cmd: f"/usr/bin/{cmd}" if cmd in installed else None


def test_available_profiles_hides_missing_requirements():
    assert [p["slug"] for p in available_profiles(PROFILES, which=which_only())] == [
        "small",
        "big",
    ]
    assert [p["slug"] for p in available_profiles(PROFILES, which=which_only("rserver"))] == [
        "small",
        "big",
        "rstudio",
    ]


def test_available_profiles_asks_which_only_for_requirements():
    asked = []
    available_profiles(PROFILES, which=lambda cmd: asked.append(cmd))
    assert asked == ["rserver"]


def test_default_profiles_offer_rstudio_only_with_rserver():
    slugs = [p["slug"] for p in available_profiles(DEFAULT_PROFILES, which=which_only())]
    assert "rstudio" not in slugs and "lab-small" in slugs


def test_choose_profile_default_and_by_slug():
    assert choose_profile(PROFILES, None)["slug"] == "big"  # marked default
    assert choose_profile(PROFILES, "")["slug"] == "big"
    assert choose_profile(PROFILES[:1], None)["slug"] == "small"  # first when none is marked
    assert choose_profile(PROFILES, "small")["slug"] == "small"
    assert choose_profile([], None) == {}


def test_choose_unknown_profile_names_the_choices():
    with pytest.raises(ProfileError) as err:
        choose_profile(PROFILES[:2], "huge")
    assert str(err.value) == "Unknown profile 'huge'. Choose one of: small, big."
    assert isinstance(err.value, ValueError)


def test_render_form_has_one_radio_per_profile_with_the_default_checked():
    form = render_form(PROFILES[:2])
    radios = re.findall(r"<input [^>]*>", form)
    assert len(radios) == 2
    assert all('type="radio"' in r and 'name="profile"' in r for r in radios)
    assert 'value="small"' in radios[0] and "checked" not in radios[0]
    assert 'value="big"' in radios[1] and "checked" in radios[1]
    assert "8 CPUs" in form


def test_render_form_escapes_html():
    evil = [
        {"slug": 'a"><script>x</script>', "display_name": "<b>A</b>", "description": "1 < 2 & 3"},
        {"slug": "b", "display_name": "B", "default": True},
    ]
    form = render_form(evil)
    assert "<script>" not in form and "<b>A</b>" not in form
    assert "&lt;b&gt;A&lt;/b&gt;" in form
    assert "1 &lt; 2 &amp; 3" in form
    assert 'value="a&quot;&gt;&lt;script&gt;' in form


def test_render_form_is_empty_without_a_choice():
    assert render_form(PROFILES[:1]) == ""
    assert render_form([]) == ""


def test_options_from_form():
    assert options_from_form({"profile": ["big"]}) == {"profile": "big"}
    assert options_from_form({"profile": ["big", "small"]}) == {"profile": "big"}
    assert options_from_form({}) == {"profile": ""}
    assert options_from_form({"profile": []}) == {"profile": ""}


def test_render_form_ticks_the_chosen_profile_and_shows_the_note():
    form = render_form(PROFILES[:2], chosen="small", note="Start resumes <it>")
    radios = re.findall(r"<input [^>]*>", form)
    assert "checked" in radios[0] and "checked" not in radios[1]
    assert form.index("Start resumes &lt;it&gt;") < form.index("<input")
    # a profile no longer offered: the default one
    radios = re.findall(r"<input [^>]*>", render_form(PROFILES[:2], chosen="gone"))
    assert "checked" in radios[1]


def test_a_suspended_servers_form_ticks_its_profile_and_says_it_resumes():
    """MigratingSpawner's own options_form, on what a suspend leaves (no hub needed)."""
    checkpoint = new_checkpoint_id()
    server = types.SimpleNamespace(
        suspended=time.time(),
        checkpoint_id=checkpoint,
        fresh_start=False,
        user_options={"profile": "small"},
        checkpoint_time=checkpoint_time,
        _profiles=lambda: PROFILES[:2],
    )
    form = MigratingSpawner._resume_form(server)
    assert re.findall(r'value="([^"]+)" checked', form) == ["small"]
    assert "Start resumes this server where it was suspended" in form
    assert f"from checkpoint {checkpoint} of " in form
    # after a cancel (fresh start) or never suspended: the default, no note
    for fresh in (
        {"fresh_start": True},
        {"suspended": None, "checkpoint_id": None},
    ):
        form = MigratingSpawner._resume_form(types.SimpleNamespace(**{**vars(server), **fresh}))
        assert re.findall(r'value="([^"]+)" checked', form) == ["big"]
        assert "resumes" not in form
