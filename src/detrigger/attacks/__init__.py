"""Attacks: poisoners (clean data -> poisoned data) and the attacker that builds backdoored victims."""

from detrigger.attacks.attack import (ATTACKS, CARD_FILE, AttackResult, AttackSpec, build_victim, cached_victim,
                                     trigger_from_card)
from detrigger.attacks.poison import Poisoned, poison
from detrigger.attacks.triggers import insert_sentence, insert_words

__all__ = ["ATTACKS", "CARD_FILE", "AttackResult", "AttackSpec", "Poisoned", "build_victim", "cached_victim",
           "insert_sentence", "insert_words", "poison", "trigger_from_card"]
