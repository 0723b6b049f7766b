"""`RuleCache`: compiled rules kept by whoever builds catalogue snapshots, one cache per owner."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mxn.moderation.rules import RuleCache


@dataclass
class RuleSet:
    """What the cache reads of a stored rule set (`store.models.ModerationRule`)."""

    id: int
    updated_at: str = "2024-01-01 00:00:00"
    keywords: list[str] = field(default_factory=list)
    regexes: list[str] = field(default_factory=list)
    classifier: dict[str, Any] | None = None


def test_a_reload_that_changed_no_rule_set_compiles_nothing() -> None:
    cache = RuleCache()
    global_rules, own = RuleSet(1, keywords=["forbidden-word"]), RuleSet(2, regexes=[r"\d{4}"])
    first = cache.get([global_rules, own])
    cache.sweep()
    assert cache.get([global_rules, own]) is first
    assert first.first_hit("a forbidden-word") == 2 and first.first_hit("pin 1234") == 4
    # An edited rule set (a new updated_at) is compiled again.
    edited = RuleSet(2, updated_at="2024-01-02 00:00:00", regexes=[r"\d{5}"])
    assert cache.get([global_rules, edited]) is not first


def test_a_sweep_forgets_what_the_last_snapshot_did_not_ask_for() -> None:
    cache = RuleCache()
    old = cache.get([RuleSet(1, keywords=["a"])])
    cache.sweep()
    cache.get([RuleSet(2, keywords=["b"])])  # the next snapshot no longer has rule set 1
    cache.sweep()
    assert cache.get([RuleSet(1, keywords=["a"])]) is not old


def test_caches_of_different_owners_share_nothing() -> None:
    rule_sets = [RuleSet(1, keywords=["x"], classifier={"url": "http://127.0.0.1:9/check", "fail": "closed"})]
    a, b = RuleCache(), RuleCache()
    rules = a.get(rule_sets)
    assert b.get(rule_sets) is not rules
    assert rules.classifiers[0].fail_closed and rules.classifiers[0].timeout == 0.5
