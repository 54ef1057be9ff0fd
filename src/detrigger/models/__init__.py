"""Models: the `Victim` and the one way to load, build and save it (any family: models/arch.py)."""

from detrigger.models.victim import EncoderOptions, LoadOptions, Victim, default_encoder_path, load_victim, new_victim

__all__ = ["EncoderOptions", "LoadOptions", "Victim", "default_encoder_path", "load_victim", "new_victim"]
