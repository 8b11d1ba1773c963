"""The lever command-line app (installed as the import package ``lever_cli``)."""
