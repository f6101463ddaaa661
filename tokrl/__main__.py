"""`python -m tokrl ...` is the `tokrl` command."""

from tokrl.cli import main

raise SystemExit(main())
