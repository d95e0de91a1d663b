"""
C{python -m emaild}: the same as the C{emaild} command.
"""

from emaild.cli.main import main

if __name__ == "__main__":
    main()
