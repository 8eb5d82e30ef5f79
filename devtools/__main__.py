from devtools.cli import main

raise SystemExit(main())
