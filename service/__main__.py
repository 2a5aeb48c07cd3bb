"""`python -m service`: the `segment-serve` entry point (service/main.py), for where the console script is not on
the PATH."""

from .main import main

if __name__ == "__main__":  # not when a spawned worker imports it: multiprocessing skips a package's __main__
    main()
