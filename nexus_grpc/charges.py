"""What one outcome report is charged.

Reports are priced by what the engine decided, never by what the caller claims:
- the price is the routed backend's, or the reported backend's when it is one of the decision's
  alternates (the gateway retried there) — never an unrelated backend's;
- the charge is `cost_usd` when the report has it; else the price of the reported tokens (a
  missing count is taken from the decision's estimate); else the decision's estimate
  (`estimated`);
- a report for a decision this server never made is priced at the reported backend only when
  that backend serves the reported model, else at the model's table price;
- no report charges more than `[limits] max_charge_usd`.
"""

from __future__ import annotations

from typing import NamedTuple

from nexus_grpc.config.schema import Config
from nexus_grpc.domain.backend import BackendConfig
from nexus_grpc.domain.money import FREE, Price, usd_to_nano
from nexus_grpc.domain.request import Outcome
from nexus_grpc.state.flights import Basis


class Charge(NamedTuple):
    nano: int
    estimated: bool  # the decision's estimate: the report had neither cost nor tokens
    clamped: bool  # cut down to the per-outcome ceiling


def charge_for(
    outcome: Outcome, basis: Basis | None, config: Config, backends: dict[str, BackendConfig]
) -> Charge:
    ceiling = usd_to_nano(config.limits.max_charge_usd)
    estimated = False
    if outcome.cost_usd is not None:
        amount = usd_to_nano(outcome.cost_usd)
    elif outcome.input_tokens is not None or outcome.output_tokens is not None:
        tokens_in, tokens_out = outcome.input_tokens, outcome.output_tokens
        if basis is not None:
            tokens_in = basis.input_tokens if tokens_in is None else tokens_in
            tokens_out = basis.output_tokens if tokens_out is None else tokens_out
            price = _decided_price(basis, outcome.backend_id, config, backends)
        else:
            price = _reported_price(outcome, config, backends)
        amount = price.cost(tokens_in or 0, tokens_out or 0)
    else:
        amount = basis.estimate_nano if basis is not None else 0
        estimated = True
    return Charge(min(amount, ceiling), estimated, amount > ceiling)


def _table_price(config: Config, model: str) -> Price:
    return config.pricing.get(model) or config.default_price or FREE


def _decided_price(basis: Basis, reported: str, config: Config, backends: dict[str, BackendConfig]) -> Price:
    backend = backends.get(basis.prices_at(reported))
    if backend is None:  # removed since the decision: the model's table price
        return _table_price(config, basis.model)
    return config.price_for(backend, basis.model)


def _reported_price(outcome: Outcome, config: Config, backends: dict[str, BackendConfig]) -> Price:
    backend = backends.get(outcome.backend_id)
    if backend is not None and outcome.model and backend.model(outcome.model) is not None:
        return config.price_for(backend, outcome.model)
    return _table_price(config, outcome.model)
