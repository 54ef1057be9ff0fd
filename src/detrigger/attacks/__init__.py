"""Attacks: poisoners (clean data -> poisoned data) and the attacker that builds backdoored victims."""

from detrigger.attacks.attack import (
                                      ATTACKS,
                                      CARD_FILE,
                                      Attack,
                                      AttackResult,
                                      AttackSpec,
                                      build_victim,
                                      cached_victim,
                                      register_attack,
                                      trigger_from_card,
)
from detrigger.attacks.poison import Poisoned, add_negatives, poison
from detrigger.attacks.triggers import insert_all, insert_sentence, insert_words, replace_spaces, substitute_homoglyphs

__all__ = ["ATTACKS", "CARD_FILE", "Attack", "AttackResult", "AttackSpec", "Poisoned", "add_negatives",
           "build_victim", "cached_victim", "insert_all", "insert_sentence", "insert_words", "poison",
           "register_attack", "replace_spaces", "substitute_homoglyphs", "trigger_from_card"]
