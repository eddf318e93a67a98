from orderwatch.cli import main

raise SystemExit(main())
