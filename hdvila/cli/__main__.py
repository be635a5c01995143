"""`python -m hdvila.cli ...` (also what torchrun and `deepspeed --module` run)."""
import sys

from hdvila.cli import main

sys.exit(main())
