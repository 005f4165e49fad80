from matchmill.pipeline.cli import main

raise SystemExit(main())
