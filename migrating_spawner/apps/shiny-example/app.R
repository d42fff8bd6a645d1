# An example Shiny app (copied to ~/shiny-app at the first start; edit it there).
library(shiny)

ui <- fluidPage(
  titlePanel("A Shiny app that moves"),
  numericInput("n", "n", 21),
  h3(textOutput("twice")),
  p("Served from ", textOutput("where", inline = TRUE))
)

server <- function(input, output, session) {
  output$twice <- renderText(paste("2 x n =", 2 * input$n))
  # the host it runs on: it changes when the app moves
  output$where <- renderText(Sys.getenv("JUPYTERHUB_MIGRATING_HOST", "this host"))
}

shinyApp(ui, server)
