"""The lever command-line app (installed as the import package ``lever_cli``)."""

from lever.threads import passive_waiting

passive_waiting()  # before torch is imported: the OpenMP runtime reads OMP_WAIT_POLICY once, when it loads
