"""Where answers come from: an OpenAI-compatible server, vLLM's offline engine, or a baseline.

Modules:

    base           what every backend returns; the secret-scrubbing of error messages
    openai_compat  any OpenAI-compatible chat endpoint, through `openai`
    transport      the HTTP transport's options, declared once
    wire           what a server may send back, validated at the edge
    vllm_offline   vLLM's offline engine, for a GPU node without a server
    replicas       how many copies of the model a server runs (vLLM's `/metrics` engines)
    baselines      LLM-free baselines from the same few-shot pool
"""
