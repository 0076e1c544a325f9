"""ctest's entry to the pytest suite: skips (exit 77) with a message when
NumPy or pytest is missing, except under CI=true, where they must be there."""
import os
import sys


def main():
    try:
        import numpy  # noqa: F401
        import pytest
    except ImportError as error:
        hint = "(Debian: apt-get install python3-numpy python3-pytest; or set KVCRUSH_PYTHON)"
        if os.environ.get("CI") == "true":
            print("FAILED: CI=true needs NumPy and pytest for %s: %s %s" % (sys.executable, error, hint))
            return 1
        print("SKIPPED: the Python tests need NumPy and pytest in %s: %s %s" % (sys.executable, error, hint))
        return 77
    # No cache or bytecode in the source tree.
    sys.dont_write_bytecode = True
    here = os.path.dirname(os.path.abspath(__file__))
    return pytest.main(["-q", "-p", "no:cacheprovider", here] + sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
