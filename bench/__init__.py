"""Streaming benchmark: a simulated Letta upstream, a load generator, and the runner.

`make bench` runs `python -m bench.run_stream_bench`; see that module for what is measured.
"""
