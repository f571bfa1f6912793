"""Built-in pipeline templates (the YAML files beside this module)."""
