from llmproxy.commands.main import main

raise SystemExit(main())
