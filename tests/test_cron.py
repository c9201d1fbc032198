"""One cron dialect (eddy/cron.py) for `eddy validate`, the CRD and the preloader's consumer."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from eddy.api import ValidationError, parse_object
from eddy.cron import MACROS, next_run, schedule_problem


def cron_dataload(schedule: str) -> dict[str, object]:
    return {"apiVersion": "data.fluid.io/v1alpha1", "kind": "DataLoad", "metadata": {"name": "nightly"},
            "spec": {"dataset": {"name": "d", "namespace": "default"}, "policy": "Cron",
                     "schedule": schedule}}


@pytest.mark.parametrize("schedule", [*MACROS, "0 * * * *", "*/5 1-3 * * MON-FRI"])
def test_accepted_by_validate_and_the_consumer_alike(schedule: str) -> None:
    assert schedule_problem(schedule) is None
    parse_object(cron_dataload(schedule))  # eddy validate
    start = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    assert next_run(schedule, start) > start


@pytest.mark.parametrize("schedule", ["@reboot", "@every 1h", "0 0 * * * *", "61 * * * *", "hourly"])
def test_refused_by_both_with_the_reason(schedule: str) -> None:
    assert schedule_problem(schedule) is not None
    with pytest.raises(ValidationError, match=r"spec\.schedule"):
        parse_object(cron_dataload(schedule))


def test_hourly_is_every_hour() -> None:
    first = next_run("@hourly", datetime(2026, 1, 1, 0, 30, tzinfo=UTC))
    assert (first, next_run("@hourly", first)) == (datetime(2026, 1, 1, 1, tzinfo=UTC),
                                                   datetime(2026, 1, 1, 2, tzinfo=UTC))
