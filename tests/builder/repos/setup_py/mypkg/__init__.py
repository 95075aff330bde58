VALUE = "installed from setup.py"
