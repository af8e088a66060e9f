"""python -m agentmesh.cli"""
import sys

from . import main

sys.exit(main())
