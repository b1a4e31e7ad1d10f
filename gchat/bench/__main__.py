import sys

from gchat.bench import main

sys.exit(main())
