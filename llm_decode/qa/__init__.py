"""`strop-llm qa`: CLEVR-style questions answered from STROP programs (see `runner`)."""
