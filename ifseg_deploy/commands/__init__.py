"""The command-line commands, one module each (added to the ``cli`` group in ``cli.py``), and
:mod:`.options`, the options and parsing several of them share. Each command imports its heavy dependencies
inside the command, so that ``ifseg-deploy --help`` stays fast."""
