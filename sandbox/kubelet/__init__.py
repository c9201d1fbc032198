"""The sandbox's kubelet: `PodRunner` runs the pods bound to its node as processes (see runner.py)."""
