"""Command-line commands that live in their own modules (registered on the ``cli`` group in ``cli.py``); each
imports its heavy dependencies inside the command so that ``ifseg-deploy --help`` stays fast."""
