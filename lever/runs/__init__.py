"""lever.runs: the store, and nothing but the store.

layout     the run folder's layout (RunsFolder, RunDir, EvalDir): the only code that knows it; its records, verified
store      which runs of a plan a report shows (one spec hash, never a silent fallback)
sweep      a sweep's derived plans and its record
executors  how a sweep's jobs run (local processes, submitit, printed commands)
trackers   a run's metrics mirrored to TensorBoard and W&B (optional extras)

Where a plan's data lives is `lever.data.sources`; a run's recipe (training, evaluation) is `lever.recipe`.
"""
