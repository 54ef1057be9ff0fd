"""Attacks: poisoners (clean data -> poisoned data) and the attacker that builds backdoored victims (the trigger
functions they use are a ground-floor module, `detrigger.triggers`)."""

from detrigger.attacks.attack import (
    ATTACKS,
    CARD_FILE,
    Attack,
    AttackResult,
    AttackSpec,
    attack_spec,
    build_victim,
    cached_victim,
    card_trigger,
    evaluation_trigger,
    register_attack,
    trigger_from_card,
)
from detrigger.attacks.poison import Poisoned, add_negatives, poison

__all__ = ["ATTACKS", "CARD_FILE", "Attack", "AttackResult", "AttackSpec", "Poisoned", "add_negatives",
           "attack_spec", "build_victim", "cached_victim", "card_trigger", "evaluation_trigger", "poison",
           "register_attack", "trigger_from_card"]
