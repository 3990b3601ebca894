"""What every package of poolsieve uses: errors, file formats and the score-table schema, the workspace
and its shard layout, the Ray-or-local runtime, progress, config, models, language and tar readers.

Nothing here imports a stage (``poolsieve.pipeline``) or a filter, trainer or evaluator: dependencies
point one way, CLI / orchestration -> stages -> filters, train, eval -> core.
"""
