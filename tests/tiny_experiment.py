"""The tests' tiny experiment as a config file, for the command-line tests."""
from tests.conftest import tiny_config


def get_config():
    return tiny_config()
