"""worker: the cache tier (tiered MEM/SSD/HDD block store, block API, read-through); see docs/worker.md."""
