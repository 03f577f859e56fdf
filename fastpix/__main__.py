from fastpix.cli import main

raise SystemExit(main())
