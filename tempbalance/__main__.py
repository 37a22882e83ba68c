"""python -m tempbalance: the command line."""
from .cli import main

raise SystemExit(main())
