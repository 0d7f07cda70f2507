"""The pyGMMis demo scenario (also ``daskgmmis demo``); see :mod:`daskgmmis.demo`.

Run: python examples/demo.py [--out DIR] [--seeds N] [--threads]
"""

from daskgmmis.demo import main

if __name__ == "__main__":
    main()
