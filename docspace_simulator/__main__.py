from docspace_simulator.cli import main

raise SystemExit(main())
