"""``python -m modescape`` (and ``torchrun -m modescape``): the command line."""

from .cli import main

main()
