"""``python -m ipsecd``: the same as the ``ipsecd`` console script."""

from ipsecd.cli import main

raise SystemExit(main())
