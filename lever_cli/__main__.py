"""`python -m lever_cli`: the same as the `lever` command."""

from .app import main

main()
