"""`python -m churnops` runs the CLI."""

from churnops.cli import main

main()
