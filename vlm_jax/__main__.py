import sys

from vlm_jax.cli import main

sys.exit(main())
