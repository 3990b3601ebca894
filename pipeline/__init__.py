"""The command line and the stages: ``cli.py`` (the ``poolsieve`` command), ``commands.py`` (every
subcommand, the module that declares it and its hooks), ``experiment.py`` (``poolsieve run``), one package
per stage (``download/``, ``score/``, ``filter/``, ``reshard/``, ``inspect/``), ``submit.py`` and
``train_scorer.py``; ``demo/`` is the built-in pool and the quickstart. What every stage uses (config,
workspace, formats, the runtime) is in ``poolsieve.core``."""
