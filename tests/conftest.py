"""Shared fixtures: each real component's test bed lives in tests/support/ and is loaded here."""

pytest_plugins = [
    "tests.support.s3",
    "tests.support.kube",
    "tests.support.fuse",
]
