"""Money is integer nano-USD; prices are integer nano-USD per token."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

NANO = 1_000_000_000
# One reservation or charge: at most 2**53 nano-USD (about 9 million USD; exact as a double too).
MAX_AMOUNT_NANO = 2**53
# A scope's spent or reserved total saturates here (about 2.3 billion USD), far below int64.
MAX_TOTAL_NANO = 2**61


def clamp_amount(nano: int) -> int:
    """An amount as a ledger stores it: 0..MAX_AMOUNT_NANO."""
    return 0 if nano < 0 else min(nano, MAX_AMOUNT_NANO)


def saturate(total: int) -> int:
    """A total as a ledger stores it: 0..MAX_TOTAL_NANO."""
    return 0 if total < 0 else min(total, MAX_TOTAL_NANO)


class PriceError(ValueError):
    """A price that cannot be represented exactly in nano-USD per token."""


def usd_to_nano(usd: float) -> int:
    """Round a USD amount to nano-USD (used for API inputs such as cost_usd)."""
    return round(Decimal(repr(float(usd))) * NANO)


def nano_to_usd(nano: int) -> float:
    return nano / NANO


def per_1k_to_nano_per_token(usd_per_1k: float) -> int:
    """USD per 1K tokens -> exact nano-USD per token; finer prices are refused."""
    if not math.isfinite(usd_per_1k):
        raise PriceError(f"not a finite price: {usd_per_1k!r}")
    try:
        value = Decimal(repr(float(usd_per_1k))) * 1_000_000
    except (InvalidOperation, ValueError) as exc:  # pragma: no cover - float() already validated
        raise PriceError(f"not a price: {usd_per_1k!r}") from exc
    if value < 0:
        raise PriceError("price must not be negative")
    if value != value.to_integral_value():
        raise PriceError(f"{usd_per_1k} USD per 1K tokens is finer than 1e-9 USD per token")
    return int(value)


@dataclass(frozen=True, slots=True)
class Price:
    """Exact price of a (backend, model) pair."""

    input_nano: int  # nano-USD per input token
    output_nano: int  # nano-USD per output token

    @classmethod
    def per_1k(cls, input_per_1k: float, output_per_1k: float) -> Price:
        return cls(per_1k_to_nano_per_token(input_per_1k), per_1k_to_nano_per_token(output_per_1k))

    def cost(self, input_tokens: int, output_tokens: int) -> int:
        return input_tokens * self.input_nano + output_tokens * self.output_nano

    @property
    def input_per_1k(self) -> float:
        return self.input_nano / 1_000_000

    @property
    def output_per_1k(self) -> float:
        return self.output_nano / 1_000_000


FREE = Price(0, 0)

# Built-in model prices, USD per 1K input / output tokens.
BUILTIN_PRICES: dict[str, Price] = {
    name: Price.per_1k(i, o)
    for name, (i, o) in {
        "gpt-4-turbo": (0.01, 0.03),
        "gpt-4-turbo-preview": (0.01, 0.03),
        "gpt-4": (0.03, 0.06),
        "gpt-3.5-turbo": (0.0005, 0.0015),
        "claude-3-opus-20240229": (0.015, 0.075),
        "claude-3-sonnet-20240229": (0.003, 0.015),
        "claude-3-haiku-20240307": (0.00025, 0.00125),
        "gemini-1.5-pro": (0.0035, 0.0105),
        "gemini-1.5-flash": (0.00035, 0.00105),
        "gemini-1.0-pro": (0.0005, 0.0015),
    }.items()
}
