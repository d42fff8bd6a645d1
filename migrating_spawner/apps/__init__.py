"""Web apps and IDEs a user server runs behind jupyter-server-proxy, set up to move.

`shiny.setup_shiny` is the `shiny` jupyter-server-proxy entry (entry point group
`jupyter_serverproxy_servers`): the user's Shiny app at /user/NAME/shiny/. RStudio
(jupyter-rsession-proxy) and VS Code (jupyter-vscode-proxy) bring their own entries. What
happens to them at a move is in migrating_spawner/singleuser/apps.py.
"""
