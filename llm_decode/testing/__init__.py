"""Test helpers shipped with the package (no product module imports them).

Modules:

    fake_server          a scripted OpenAI-compatible chat server (stdlib only)
    fake_chat            what it answers: its config, derived scenes, counters
    synthetic            synthetic run folders: random CLEVR scenes and their "programs"
    tiny_chat_model      a tiny random chat model for tests against real servers
    transformers_server  `transformers serve` as a child process on 127.0.0.1
"""
