"""Local mode helpers: the embedded S3 server and the OSS-like link used by the demo, tests and benchmarks."""
