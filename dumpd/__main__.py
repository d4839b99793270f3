from dumpd.cli import main

raise SystemExit(main())
