"""The `strop` CLI, one module per area; each declares its commands at module level on a
`strop.cli_app.Commands` list named `commands` (torch is imported inside command bodies).

    data          `strop data ...`: make and inspect scene data
    train         `strop train`: train, or resume the run in `--out`
    evaluation    `strop export`, `strop eval`, `strop sweep`, `strop analyze`, `strop report`
    model         `strop model-info`, `strop cache-features`, `strop export-model`
    quickstart    `strop quickstart`: the whole pipeline on the embedded default
"""
