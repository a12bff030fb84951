"""``sequential``: a rule that weighs the evidence of errors against requests as it arrives.

See watchdogd/rules/sequential.py for the statistics and docs/rules.md for
when to use it rather than a threshold ``ratio``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from watchdogd.config.types import Duration, Percent


class SequentialSpec(BaseModel):
    """Errors over requests, judged by a CUSUM with a stated false-rollback probability."""

    errors: str = Field(
        min_length=1, description="Selector of the error counter, like 'http_requests_total{code=~\"5..\"}'."
    )
    total: str = Field(
        min_length=1, description="Selector of the request counter, like 'http_requests_total'."
    )
    bad: Percent = Field(description="The error rate that is bad, like 2%: the rule detects it and worse.")
    healthy: Percent | None = Field(
        None, description="The healthy error rate; default: learned (an upper bound) from `history`."
    )
    history: Duration = Field(
        3600.0,
        gt=0,
        description="The span before the deploy the healthy rate and the dispersion are learned from.",
    )
    dispersion: float | None = Field(
        None,
        ge=1,
        description="How bursty errors are (1: independent); default: measured on the pre-deploy history.",
    )
    false_rollback: Percent = Field(
        0.001,
        gt=0,
        lt=1,
        description="The probability of firing on a healthy deploy over `window` the rule accepts.",
    )
    window: Duration | None = Field(
        None, gt=0, description="The span `false_rollback` holds over; default: the service's watch window."
    )
    min_requests: int = Field(
        50, ge=1, description="Requests counted in the evidence before the rule may fire."
    )

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _rates(self) -> SequentialSpec:
        if not 0 < self.bad < 1:
            raise ValueError("bad must be a rate between 0% and 100%")
        if self.healthy is not None and not 0 < self.healthy < self.bad:
            raise ValueError("healthy must be above 0% and under the bad rate")
        return self


class LatencySpec(BaseModel):
    """A latency histogram after the deploy against before it: a quantile slower by at least so much."""

    histogram: str = Field(
        min_length=1,
        description="The histogram's name (its _bucket counters are read), with optional label matchers,"
        " like 'http_request_duration_seconds{route=\"/api\"}'.",
    )
    quantile: float = Field(0.99, gt=0, lt=1, description="The quantile compared, like 0.99.")
    slower_by: Percent = Field(
        0.2, ge=0, description="How much slower the quantile must be after the deploy to fire, like 20%."
    )
    confidence: Percent = Field(
        0.99,
        gt=0.5,
        lt=1,
        description="How sure the rule must be; 1 - confidence bounds its false-rollback probability.",
    )
    min_observations: int = Field(
        200, ge=10, description="Requests after the deploy (and before it) before the rule judges."
    )
    history: Duration = Field(
        3600.0, gt=0, description="The span before the deploy whose histogram is the reference."
    )

    model_config = ConfigDict(extra="forbid", frozen=True)
