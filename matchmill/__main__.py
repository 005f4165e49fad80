from matchmill.cli import main

raise SystemExit(main())
