"""The `strop` CLI, one module per area; each declares its commands at module level on a
`strop.cli_app.Commands` list named `commands` (torch is imported inside command bodies)."""
