"""The one-machine cluster: stand-ins for what a real cluster and cloud provide (docs/sandbox.md).

Used by tests, `make demo` and the benchmarks; never imported by production code (`eddy/` and the
parts). It holds the embedded S3 server and the OSS-like link, the Kubernetes API server stand-in with
admission, minimal workload controllers, the pod network and the pod runner (the kubelet's part).
"""
