import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

pytest_plugins = ["tests.fixtures.sshd", "tests.fixtures.pg", "tests.fixtures.project",
                  "tests.fixtures.webhook"]
