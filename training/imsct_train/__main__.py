"""``python -m imsct_train --config ...`` is ``python -m imsct_train.train --config ...``."""
from .train import main

raise SystemExit(main())
