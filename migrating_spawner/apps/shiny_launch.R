# Runs the user's Shiny app for jupyter-server-proxy. Arguments: port, example folder.
# The app folder is $SHINY_APP_DIR or ~/shiny-app (in the home: it moves with it); a first
# start copies the example there. Every session allows reconnecting ("force": Shiny
# otherwise reconnects only under Shiny Server or Connect), so a page open during a move
# reconnects to the app on the new host by itself instead of greying out.
args <- commandArgs(TRUE)
port <- as.integer(args[1])
dir <- Sys.getenv("SHINY_APP_DIR", file.path(Sys.getenv("HOME"), "shiny-app"))
if (!file.exists(file.path(dir, "app.R")) && !file.exists(file.path(dir, "server.R"))) {
  dir.create(dir, recursive = TRUE, showWarnings = FALSE)
  file.copy(list.files(args[2], full.names = TRUE), dir, recursive = TRUE)
}
suppressPackageStartupMessages(library(shiny))
app <- shinyAppDir(dir)
user_server <- app$serverFuncSource()
app$serverFuncSource <- function() {
  function(input, output, session, ...) {
    session$allowReconnect("force")
    if ("session" %in% names(formals(user_server))) {
      user_server(input, output, session, ...)
    } else {
      user_server(input, output)
    }
  }
}
runApp(app, port = port, host = "127.0.0.1", launch.browser = FALSE)
