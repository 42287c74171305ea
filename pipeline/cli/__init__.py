"""The commands: thin Hydra apps over the same `conf/` tree (compose -> validate -> call -> exit code)."""
