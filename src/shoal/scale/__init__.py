"""Batches and flows beyond one machine: on a Dask distributed cluster, every item a
journaled run, the providers' caps shared through Redis (docs/scale.md).

``distributed`` is imported only when a :class:`DaskExecutor` runs.
"""

from shoal.scale.batch_run import resume_batch, run_batch
from shoal.scale.executor import DaskExecutor, LocalExecutor

__all__ = ["DaskExecutor", "LocalExecutor", "resume_batch", "run_batch"]
