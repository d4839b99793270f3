"""`python -m dumpd_balloon`: the `dumpd-balloon` command."""

from __future__ import annotations

from .tool import main

raise SystemExit(main())
