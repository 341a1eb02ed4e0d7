"""hukou-convert: the one-shot batch tool for the household-register cutover (户籍一元化)."""

__version__ = "0.1.0"
