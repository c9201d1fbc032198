"""The controller's pure parts: which sidecars to stop, conditions, phases, the subset diff."""

from __future__ import annotations

from typing import Any

from controller.podfinish import STOP_ANNOTATION, sidecars_to_stop
from controller.status import Condition, differs, merge_conditions, worker_phase


def pod(policy: str, app_state: dict[str, Any], *, native: bool = False,
        annotations: dict[str, str] | None = None) -> dict[str, Any]:
    sidecar = {"name": "eddy-data", "image": "eddy", "env": [{"name": "EDDY_DATASET", "value": "ns/data"}]}
    spec: dict[str, Any] = {"restartPolicy": policy, "containers": [{"name": "main", "image": "app"}]}
    if native:
        spec["initContainers"] = [{**sidecar, "restartPolicy": "Always"}]
    else:
        spec["containers"].insert(0, sidecar)
    return {
        "metadata": {"name": "p", "labels": {"done.sidecar.fluid.io/inject": "true"},
                     "annotations": annotations or {}},
        "spec": spec,
        "status": {"containerStatuses": [
            {"name": "eddy-data", "state": {"running": {}}}, {"name": "main", "state": app_state}]},
    }


def test_sidecar_stops_after_success_or_failure_with_never() -> None:
    assert sidecars_to_stop(pod("Never", {"terminated": {"exitCode": 0}})) == ["eddy-data"]
    assert sidecars_to_stop(pod("Never", {"terminated": {"exitCode": 137}})) == ["eddy-data"]
    assert sidecars_to_stop(pod("OnFailure", {"terminated": {"exitCode": 0}})) == ["eddy-data"]


def test_sidecar_stays_while_the_app_runs_or_will_restart() -> None:
    assert sidecars_to_stop(pod("Never", {"running": {}})) == []
    assert sidecars_to_stop(pod("OnFailure", {"terminated": {"exitCode": 1}})) == []  # it restarts
    assert sidecars_to_stop(pod("Always", {"terminated": {"exitCode": 0}})) == []
    assert sidecars_to_stop(pod("Never", {"terminated": {"exitCode": 0}}, native=True)) == []
    done = pod("Never", {"terminated": {"exitCode": 0}}, annotations={STOP_ANNOTATION: "true"})
    assert sidecars_to_stop(done) == []  # already told
    unlabelled = pod("Never", {"terminated": {"exitCode": 0}})
    unlabelled["metadata"]["labels"] = {}
    assert sidecars_to_stop(unlabelled) == []


def test_conditions_keep_their_times_while_unchanged() -> None:
    first = merge_conditions(None, [Condition("Ready", True, "Bound", "ok")], "t1")
    same = merge_conditions(first, [Condition("Ready", True, "Bound", "ok")], "t2")
    assert same == first
    flipped = merge_conditions(first, [Condition("Ready", False, "UfsUnavailable", "down")], "t3")
    assert flipped[0]["lastTransitionTime"] == "t3" and flipped[0]["status"] == "False"


def test_worker_phases() -> None:
    assert [worker_phase(3, r) for r in (0, 1, 3)] == ["NotReady", "PartialReady", "Ready"]
    assert worker_phase(0, 0) == "NotReady"


def test_differs_ignores_server_defaults_but_not_changes() -> None:
    live = {"spec": {"replicas": 1, "revisionHistoryLimit": 10, "template": {"containers": [
        {"name": "w", "image": "i", "terminationMessagePath": "/dev/termination-log"}]}}}
    assert not differs({"spec": {"replicas": 1, "template": {"containers": [{"name": "w", "image": "i"}]}}},
                       live)
    assert differs({"spec": {"replicas": 2}}, live)
    assert differs({"spec": {"template": {"containers": []}}}, live)
