"""Lets `pytest` find the package from a source checkout when it is not installed."""
import importlib.util
import os
import sys

if importlib.util.find_spec("qatfhe") is None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
