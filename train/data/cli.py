"""The command lines' argument parser: a user's mistake is one line (``prog: error: ...``) and exit status 2.

argparse prints the whole usage block before the error (dozens of lines for the trainer); the usage is what
``--help`` is for, the error names the option.
"""

from __future__ import annotations

import argparse


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")
