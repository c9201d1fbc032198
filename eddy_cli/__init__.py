"""The `eddy` console command: one subcommand per part, plus `validate` and `demo`.

This package sits above the parts (it is the only place that imports them all); `eddy/` stays the
shared kernel that imports nothing upward.
"""
