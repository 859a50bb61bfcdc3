"""``python -m kubestep._cli``: the ``kubestep`` command (the tests and the dev tooling run it so)."""

from . import main

if __name__ == "__main__":
    main()
