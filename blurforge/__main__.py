from blurforge.cli import entry

entry()
