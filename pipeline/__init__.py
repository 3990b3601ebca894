"""poolsieve pipeline: CLI, config, workspace, file formats, Ray runtime and the data stages."""
