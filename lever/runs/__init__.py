"""lever.runs: a run and everything it owns.

layout   the run folder's layout (RunDir, EvalDir, RunsFolder): the only code that knows it
recipe   prepare stage data, build the model, compile the stages (shared by every entry point)
run      train a plan's stages into its run folder, resuming, reusing, recording how it ended
store    which runs of a plan a report shows (one spec hash, never a silent fallback)
predict  what a plan's settings make of candidate data before training (`lever data stats --plan`)
sources  where a plan's named data lives (workspace files or the bundled benchmark)
"""
