"""Attacks: trigger functions now; poisoners and attackers build on them."""

from detrigger.attacks.triggers import insert_sentence, insert_words

__all__ = ["insert_sentence", "insert_words"]
