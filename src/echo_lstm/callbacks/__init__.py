"""Lightning callbacks, one per file; `conf/callbacks/` has one YAML per callback and `default` composes them."""
