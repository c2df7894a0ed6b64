from modelworks.cli import main

raise SystemExit(main())
