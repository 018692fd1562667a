"""Where answers come from: an OpenAI-compatible server, vLLM's offline engine, or a baseline."""
