"""Batch pipelines on SLURM and PBS: the cluster config, the job scripts, `newsdl submit` and
the scheduler side of `newsdl status`. See pipelines/README.md."""
