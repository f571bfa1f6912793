"""The knowledge base: failures seen in an organisation's runs, the remedies and guidance that fixed them, and how
well each did since, so that a retry starts from what worked before instead of blindly.

- ``signature``: a failure's normalised signature (what stays the same when the same thing goes wrong again);
- ``hints``: the pydantic models that travel in activities and answers (a hint, a record, a failure's context);
- ``vectors``: each embedding model's HNSW index, and the one query that uses it;
- ``store``: the reads and writes the learning loop, the API and the CLI call.
"""
