"""The sandbox's kubelet: `PodRunner` runs the pods bound to its node as processes (see runner.py).

Modules: runner (watch, bind, exec, logs), pod (one pod's life), container (one container's restarts,
hooks and probes), specs (container spec -> ProcessSpec), envs, volumes + atomic (kubelet's volume
layout and `..data` swap), probes, images (Eddy's image from the Dockerfile), status; the process
layer is process.py + shim.py + cgroups.py (+ cgroupfs.py: where the hierarchies are, mounted if need be).
"""

from sandbox.kubelet.images import ImageCatalog, ImageConfig
from sandbox.kubelet.process import ExecResult
from sandbox.kubelet.runner import PodNotFound, PodRunner

__all__ = ["ExecResult", "ImageCatalog", "ImageConfig", "PodNotFound", "PodRunner"]
