"""`strop-llm qa`: CLEVR-style questions answered from STROP programs (see `runner`).

Modules:

    cli           the `strop-llm qa` command: decode's options plus QA's own
    runner        plan, ask and summarise (on decode's runner)
    questions     questions from a scene by templates, or from CLEVR's files
    programs      CLEVR's functional programs, executed on a scene: the answers
    scoring       reading an answer, scoring it, accuracy per family
    report        the QA part of `strop-llm report`
"""
