"""Living beside Fluid: Eddy's controller and webhook refuse to start where Fluid is installed
(its CRDs not marked as Eddy's, or its controllers running), on the sandbox API server."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import cli as controller_cli
from eddy import crds
from eddy.fluidcheck import CRDS, fluid_evidence
from eddy.kube import DEPLOYMENTS, NAMESPACES, Kube
from webhook import cli as webhook_cli
from webhook.cluster import run_cluster

FLUID = Path(__file__).resolve().parent / "data" / "fluid"


def parse(register: Any, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(argv)


async def test_eddys_own_crds_are_not_fluid_but_fluids_are(kube_api: Any, capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    async with await Kube.connect(url=kube_api.url) as kube:
        for kind in crds.PLURALS:
            await kube.create(CRDS, crds.crd(kind))
        assert await fluid_evidence(kube) == []

        # Eddy's own CRDs: the controller gets past the check (and is then stopped by us).
        argv = ["controller", "--kube-url", kube_api.url, "--metrics-port", "0"]
        args = parse(controller_cli.register, argv)
        task = asyncio.create_task(controller_cli.run(args))
        await asyncio.sleep(0.5)
        assert not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

        # Fluid's own CRD of a kind Eddy does not serve, and its controller Deployment.
        fluid = yaml.safe_load((FLUID / "data.fluid.io_datasets.yaml").read_text())
        fluid["metadata"]["name"] = "alluxioruntimes.data.fluid.io"
        fluid["spec"]["names"].update(plural="alluxioruntimes", kind="AlluxioRuntime",
                                      singular="alluxioruntime", listKind="AlluxioRuntimeList", shortNames=[])
        await kube.create(CRDS, fluid)
        await kube.create(NAMESPACES, {"metadata": {"name": "fluid-system"}})
        await kube.create(DEPLOYMENTS, {
            "metadata": {"name": "dataset-controller", "namespace": "fluid-system"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {
                "metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}},
        }, "fluid-system")
        assert await fluid_evidence(kube) == [
            "CRD alluxioruntimes.data.fluid.io was not installed by Eddy",
            "Fluid's controller Deployment fluid-system/dataset-controller exists",
        ]
        capsys.readouterr()
        assert await controller_cli.run(args) == 1
        err = capsys.readouterr().err
        assert "eddy controller: Fluid is installed in this cluster" in err and "alluxioruntimes" in err

        webhook_args = parse(webhook_cli.register, [
            "webhook", "--kube-url", kube_api.url, "--namespace", "eddy-system", "--cert-dir", str(tmp_path)])
        assert await run_cluster(webhook_args, asyncio.Event()) == 1
        assert "eddy webhook: Fluid is installed in this cluster" in capsys.readouterr().err

        # As commands: exit 1 and the reason in one line on stderr, nothing else.
        for argv in (["controller", "--metrics-port", "0"], ["webhook", "--cert-dir", str(tmp_path)]):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "eddy_cli.main", *argv, "--kube-url", kube_api.url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            lines = err.decode().splitlines()
            assert proc.returncode == 1 and not out and len(lines) == 1, err
            assert lines[0].startswith(f"eddy {argv[0]}: Fluid is installed in this cluster"), err


async def test_fluids_own_dataset_crd_counts_as_fluid(kube_api: Any) -> None:
    async with await Kube.connect(url=kube_api.url) as kube:
        await kube.create(CRDS, yaml.safe_load((FLUID / "data.fluid.io_datasets.yaml").read_text()))
        assert await fluid_evidence(kube) == ["CRD datasets.data.fluid.io was not installed by Eddy"]
