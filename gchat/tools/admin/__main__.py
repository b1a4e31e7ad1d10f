import sys

from gchat.tools.admin.cli import main

sys.exit(main())
