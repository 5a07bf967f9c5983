"""Checks of model options shared by the families; each raises ValueError naming the key and what is allowed."""


def check_dropout(key: str, rate: float) -> float:
    """A dropout rate must leave something to keep: [0, 1)."""
    if not 0 <= rate < 1:
        raise ValueError(f"model.{key}: got {rate}; allowed: a number in [0, 1)")
    return rate
