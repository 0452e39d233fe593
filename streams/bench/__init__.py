"""``loyalty bench``: throughput, latency, memory and recovery of the service.

Modules:

* :mod:`streams.bench.generator` - the input streams (a fast generator with
  an exact event and customer count, or :mod:`streams.synthetic`);
* :mod:`streams.bench.baseline` - the plain aiokafka loop every figure is
  compared with (also runnable as ``python -m streams.bench.baseline``);
* :mod:`streams.bench.harness` - unique topics/app id per run, preloading,
  the ``loyalty worker`` subprocess, /proc and /metrics sampling, cleanup;
* :mod:`streams.bench.phases` - the measurements, in run order;
* :mod:`streams.bench.report` - machine description, table and JSON output.

Nothing here is imported by the service; the CLI module imports it lazily.
"""
