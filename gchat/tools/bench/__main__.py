import sys

from gchat.tools.bench import main

sys.exit(main())
