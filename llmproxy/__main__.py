from llmproxy.cli import main

raise SystemExit(main())
