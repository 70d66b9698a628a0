"""``python -m gigafactory.cli`` (and ``torchrun -m gigafactory.cli``) runs the CLI."""

from gigafactory.cli import main

main()
