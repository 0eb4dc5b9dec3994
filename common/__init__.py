"""Leaf modules every layer may import (they import nothing else of the project): the errors a user
can fix, the typed settings, the command line and process guards, safe files and folders, signals."""
