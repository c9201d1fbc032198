"""`eddy demo`: the seed's scenario end to end on one machine, no cloud account.

By default on the one-machine cluster (sandbox/): Eddy installed from manifests/ with kubectl, the
seed's files applied, the controller, preloader, webhook and the injected pod doing the rest, the copy
made inside the app container (eddy_cli/demo_cluster.py). `--local` runs the parts as local processes
driven by flags instead (eddy_cli/demo_steps.py: no cluster, no namespaces). Both end with the speed-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eddy.quantity import parse_quantity

if TYPE_CHECKING:
    from eddy_cli.demo_cluster import ClusterDemo
    from eddy_cli.demo_steps import DemoRun

SEED_DIR_CANDIDATES = ("../shared/seed", "shared/seed")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="the seed scenario on a one-machine cluster (install, Dataset, DataLoad, injected pod, copy)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size", default="1Gi", help="data set size, a quantity (default 1Gi)")
    parser.add_argument("--workers", type=int, default=1, help="worker replicas (the seed uses 1)")
    parser.add_argument(
        "--bandwidth",
        default="50M",
        help="OSS-like link cap in bytes/s, a quantity (default 50M: the seed's cache-less copy, "
        "1.16 GiB in 24.966 s); 0 disables",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=15.0, help="OSS-like per-request latency; 0 disables"
    )
    parser.add_argument("--seed-dir", type=Path, help="folder with the seed manifests (default: built in)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) after the run")
    parser.add_argument(
        "--local", action="store_true",
        help="run the parts as local processes driven by flags, not on the one-machine cluster",
    )
    parser.add_argument("--acs", action="store_true", help="run the seed's deployment-acs.yaml, not -eci")
    parser.add_argument(
        "--no-fuse", action="store_true", help="--local: read through the sidecar's reader without a mount"
    )
    parser.set_defaults(func=_run)


def find_seed_dir(explicit: Path | None) -> Path:
    """The seed's manifests: given, beside the repo (`../shared/seed`), or the copy shipped in the package."""
    if explicit:
        return explicit
    here = Path(__file__).resolve().parent
    for candidate in SEED_DIR_CANDIDATES:
        path = (here.parent / candidate).resolve()
        if (path / "dataset.yaml").exists():
            return path
    return here / "seed"


def fuse_usable() -> tuple[bool, str]:
    if not os.path.exists("/dev/fuse"):
        return False, "/dev/fuse does not exist"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return False, "no permission to open /dev/fuse"
    if shutil.which("fusermount3") is None:
        return False, "fusermount3 is not installed (apt-get install fuse3)"
    return True, ""


def cluster_prerequisites() -> str:
    """What the sandbox needs that this machine lacks ("" when nothing): root, FUSE, netns, kubectl."""
    if os.geteuid() != 0:
        return "root (network namespaces, mounts, other users)"
    ok, why = fuse_usable()
    if not ok:
        return f"FUSE ({why})"
    for tool in ("ip", "kubectl"):
        if shutil.which(tool) is None:
            return f"`{tool}` (make installs it)"
    return ""


def _run(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    total = parse_quantity(args.size)
    bandwidth = parse_quantity(args.bandwidth)
    use_fuse, why_not = fuse_usable()
    if args.no_fuse:
        use_fuse, why_not = False, "--no-fuse was given"
    if not args.local and (missing := cluster_prerequisites()):
        print(f"eddy demo: the one-machine cluster needs {missing} (or run `eddy demo --local`)")
        return 2
    # Imported here: the demo's stand-ins (sandbox/) are not part of the runtime image, and every other
    # subcommand (a probe among them) should not pay for importing them.
    from eddy_cli.demo_cluster import ClusterDemo
    from eddy_cli.demo_steps import DemoRun

    work = Path(tempfile.mkdtemp(prefix="eddy-demo-"))
    run: DemoRun | ClusterDemo
    if not args.local:
        run = ClusterDemo(work=work, seed_dir=find_seed_dir(args.seed_dir), total=total, workers=args.workers,
                          bandwidth=bandwidth, latency_s=args.latency_ms / 1000, acs=args.acs)
    else:
        run = DemoRun(work=work, seed_dir=find_seed_dir(args.seed_dir), total=total, workers=args.workers,
                      bandwidth=bandwidth, latency_s=args.latency_ms / 1000, use_fuse=use_fuse,
                      why_no_fuse=why_not)
    started = time.monotonic()
    # Ctrl-C, and also SIGTERM (`timeout`, a CI runner): cancel the run so `finally` stops and unmounts.
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await run.execute()
    except asyncio.CancelledError:
        print("\ninterrupted: cleaning up")
        return 130
    except Exception as exc:
        print(f"\ndemo failed: {type(exc).__name__}: {exc}")
        (work / "logs").mkdir(parents=True, exist_ok=True)
        (work / "logs" / "demo-traceback.txt").write_text(traceback.format_exc())
        print(f"logs: {work}/logs (kept; demo-traceback.txt has the stack)")
        args.keep = True
        return 1
    finally:
        await run.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"(demo took {time.monotonic() - started:.0f}s)")
    return 0
