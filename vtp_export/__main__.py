from vtp_export.cli import main

raise SystemExit(main())
