"""Turn `eddy worker` flags, manifest files or the controller's config file into `WorkerSettings`.

Where things come from:
- the Dataset (and the JindoRuntime, for the tiers): `-f FILE...` (local mode), else `--config FILE`
  (default `/etc/eddy/config/eddy.yaml`, the ConfigMap the controller writes in a cluster);
- credentials: the Secret volume directory (`--secret-dir`, default `/etc/eddy/secrets` if present);
- levels: the runtime's `tieredstore.levels`; each level's blocks go to `<path>/eddy/<ns>/<name>`
  unless `--level-path MEDIUM=DIR` names this worker's directory exactly (local mode runs several
  workers on one machine). Without a runtime, one MEM level on /dev/shm with `--level-quota`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from eddy.api import Dataset, JindoRuntime, TierLevel
from eddy.blocks import DEFAULT_BLOCK_SIZE
from eddy.config import RuntimeConfig, load_config
from eddy.manifests import load_all
from eddy.names import CONFIG_FILE_KEY, CONFIG_MOUNT_DIR, SECRETS_MOUNT_DIR, WORKER_PORT
from eddy.quantity import parse_quantity
from eddy.secrets import SecretSource
from eddy.wire import TOKEN_DIR
from worker.guard import TokenError, load_tokens
from worker.server import WorkerSettings
from worker.tierstore import LevelConfig

DEFAULT_CONFIG = Path(CONFIG_MOUNT_DIR) / CONFIG_FILE_KEY
DEFAULT_MEM_QUOTA = "2Gi"


class SettingsError(ValueError):
    """The flags or files do not describe a worker; the message says what is wrong."""


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        medium, sep, value = item.partition("=")
        medium = medium.strip().upper()
        if not sep or medium not in ("MEM", "SSD", "HDD") or not value:
            raise SettingsError(f"{flag} {item!r}: expected MEDIUM=VALUE with MEDIUM one of MEM, SSD, HDD")
        out[medium] = value
    return out


def _pick_dataset(datasets: list[Dataset], name: str | None, namespace: str | None) -> Dataset:
    chosen = [
        d for d in datasets
        if (name is None or d.meta.name == name) and (namespace is None or d.meta.namespace == namespace)
    ]
    if not chosen:
        want = f"{namespace or '*'}/{name or '*'}"
        have = ", ".join(d.meta.key for d in datasets) or "none"
        raise SettingsError(f"no Dataset {want} in the given files (found: {have})")
    if len(chosen) > 1:
        raise SettingsError(
            "several Datasets given (" + ", ".join(d.meta.key for d in chosen) + "); pick one with --dataset"
        )
    return chosen[0]


def _load(args: argparse.Namespace) -> tuple[Dataset, JindoRuntime | None, RuntimeConfig | None]:
    if args.file:
        manifests = load_all(args.file)
        dataset = _pick_dataset(manifests.datasets, args.dataset, args.namespace)
        runtime = manifests.runtime(dataset.meta.name, dataset.meta.namespace)
        return dataset, runtime, None
    config_path = Path(args.config) if args.config else DEFAULT_CONFIG
    if not config_path.exists():
        raise SettingsError(f"no manifests given (-f) and no config file at {config_path}")
    config = load_config(config_path)
    dataset = _pick_dataset([config.dataset], args.dataset, args.namespace)
    return dataset, config.runtime, config


def listen_address(args: argparse.Namespace, config: RuntimeConfig | None) -> tuple[str, int]:
    """Host and port: the flags, else local mode's 127.0.0.1:8080 or, from a config file (a pod),
    all interfaces and the config's worker port."""
    host = args.host or ("0.0.0.0" if config is not None else "127.0.0.1")
    port = args.port if args.port is not None else (config.worker_port if config is not None else WORKER_PORT)
    return host, port


def _levels(args: argparse.Namespace, dataset: Dataset, runtime: JindoRuntime | None) -> list[LevelConfig]:
    paths = _pairs(args.level_path, "--level-path")
    quotas = {m: parse_quantity(q) for m, q in _pairs(args.level_quota, "--level-quota").items()}
    levels: list[TierLevel] = list(runtime.levels) if runtime is not None else []
    if not levels:
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else "/tmp"
        levels = [TierLevel("MEM", shm, parse_quantity(DEFAULT_MEM_QUOTA), DEFAULT_MEM_QUOTA)]
    out: list[LevelConfig] = []
    for level in levels:
        # Several disks in one level (`path: /a,/b`, `quotaList`): one store per disk, in the order
        # given, each with its own quota and the level's watermarks; blocks evicted from a full disk
        # move on to the next, so the level holds the sum of its disks. The flags name the first disk.
        disks = list(zip(level.paths, level.quotas, strict=False)) or [(level.path, level.quota)]
        for index, (disk, disk_quota) in enumerate(disks):
            name = level.mediumtype if index == 0 else f"{level.mediumtype}.{index}"
            if index == 0 and level.mediumtype in paths:
                directory = Path(paths.pop(level.mediumtype))
            else:
                directory = Path(disk) / "eddy" / dataset.meta.namespace / dataset.meta.name
            level_quota = quotas.pop(level.mediumtype, disk_quota) if index == 0 else disk_quota
            out.append(LevelConfig(name, directory, level_quota, level.high, level.low))
    unused = sorted(set(paths) | set(quotas))
    if unused:
        raise SettingsError(f"--level-path/--level-quota name levels the runtime does not have: {unused}")
    return out


def build_settings(args: argparse.Namespace) -> tuple[WorkerSettings, tuple[str, int]]:
    """The worker's settings and its listen address."""
    dataset, runtime, config = _load(args)
    levels = _levels(args, dataset, runtime)
    secret_dir = args.secret_dir
    if secret_dir is None and Path(SECRETS_MOUNT_DIR).is_dir():
        secret_dir = SECRETS_MOUNT_DIR
    secrets = SecretSource.from_dir(secret_dir) if secret_dir else None
    disk = next((lvl for lvl in levels if lvl.mediumtype != "MEM"), None)
    block_size = getattr(args, "block_size", None) or (config.block_size if config else DEFAULT_BLOCK_SIZE)
    if block_size <= 0:
        raise SettingsError(f"--block-size {block_size}: must be positive")
    token_dir = getattr(args, "token_dir", None)
    if token_dir is None and Path(TOKEN_DIR).is_dir():
        token_dir = TOKEN_DIR
    try:
        tokens = load_tokens(Path(token_dir) if token_dir else None)
    except TokenError as exc:
        raise SettingsError(str(exc)) from None
    try:
        mapped_bytes = parse_quantity(str(getattr(args, "mapped_bytes", "1Gi")))
    except ValueError as exc:
        raise SettingsError(f"--mapped-bytes: {exc}") from None
    if mapped_bytes < 0:
        raise SettingsError(f"--mapped-bytes {mapped_bytes}: must not be negative")
    settings = WorkerSettings(
        dataset=dataset,
        levels=levels,
        secrets=secrets,
        max_fetches=args.max_fetches,
        warm_concurrency=args.warm_concurrency,
        serve_mode=args.serve_mode,
        verify=args.verify,
        reverify_after=args.reverify_after,
        mapped_bytes=mapped_bytes,
        promote=not args.no_promote,
        store_timeout=args.store_timeout,
        meta_dir=disk.path / "meta" if disk is not None else None,
        block_size=block_size,
        tokens=tokens,
        idle_timeout=getattr(args, "idle_timeout", 15.0),
        body_timeout=getattr(args, "body_timeout", 30.0),
        max_connections=getattr(args, "max_connections", 1024),
    )
    return settings, listen_address(args, config)
