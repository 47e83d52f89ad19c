"""`python -m selserve` is the `selserve` command."""

from .cli import main

raise SystemExit(main())
