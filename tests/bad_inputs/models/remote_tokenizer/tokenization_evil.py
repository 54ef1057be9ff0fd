"""A model folder's own code: if anything ever imports it, it writes the marker file the test looks for."""
import os
import pathlib

pathlib.Path(os.environ.get("DETRIGGER_TEST_MARKER", "/tmp/detrigger-remote-code-ran")).write_text("ran\n")
