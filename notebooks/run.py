"""Executes every notebook given on the command line with nbclient, in order, and fails on the
first cell that raises. `notebooks/ci.sh` runs it against a live `cohortex demo --keep-running`."""

import sys

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main(paths):
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        client = NotebookClient(notebook, timeout=600, kernel_name="python3")
        try:
            client.execute()
        except CellExecutionError as error:
            print(f"{path}: a cell failed\n{error}", file=sys.stderr)
            return 1
        print(f"{path}: {len(notebook.cells)} cells executed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
