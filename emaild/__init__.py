"""emaild: the e-mail backbone of an online course."""

__version__ = "0.1.0"
