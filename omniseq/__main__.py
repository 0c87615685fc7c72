"""``python -m omniseq``: the same as the ``omniseq`` command."""

from omniseq.recipes.launcher import main

if __name__ == "__main__":
    main()
