"""`python -m exporter` entry point."""

from exporter.cli import main

raise SystemExit(main())
