"""devart: the control plane of agent pipelines.

Every package is installed under this one name (the folders here link to the repository's top-level
folders), so installing devart adds no generic top-level package such as ``core`` or ``api`` to an environment."""
