# The R half of the rsession stand-in (see ./rsession). Arguments: port, flag folder, address.
#   GET /            JSON: {"resumed", "forced", "variables", "r_version"}
#   GET /eval?code=  evaluates R code in the global environment, answers its printed value
#   GET /run?code=   queues R code to run at the top level (the session is busy while it runs)
.standin <- new.env()
local({
  args <- commandArgs(TRUE)
  port <- as.integer(args[1])
  flags <- args[2]
  address <- if (length(args) >= 3) args[3] else "127.0.0.1"
  home <- Sys.getenv("HOME")
  active <- file.path(home, ".local/share/rstudio/sessions/active")
  session <- Sys.glob(file.path(active, "session-*"))
  session <- if (length(session)) session[1] else file.path(active, "session-standin")
  data <- file.path(session, "suspended-session-data")
  resumed <- FALSE
  forced <- FALSE
  if (file.exists(file.path(data, "environment"))) {
    load(file.path(data, "environment"), envir = globalenv())
    info <- jsonlite::read_json(file.path(data, "session.json"))
    forced <- isTRUE(info$forced)
    unlink(data, recursive = TRUE)  # RStudio removes it once resumed
    resumed <- TRUE
  }
  assign("state", list(port = port, address = address, flags = flags, data = data, pending = NULL,
                       resumed = resumed, forced = forced), envir = .standin)
})

.standin$suspend <- function(forced) {
  s <- .standin$state
  dir.create(s$data, recursive = TRUE, showWarnings = FALSE)
  save(list = ls(globalenv()), envir = globalenv(), file = file.path(s$data, "environment"))
  jsonlite::write_json(list(forced = forced, r_version = paste(R.version$major, R.version$minor, sep = ".")),
                       file.path(s$data, "session.json"), auto_unbox = TRUE)
  quit(save = "no", status = 0)
}

.standin$answer <- function(body, type = "application/json") {
  list(status = 200L, headers = list("Content-Type" = type), body = body)
}

.standin$app <- list(call = function(req) {
  s <- .standin$state
  code <- httpuv::decodeURIComponent(sub("^\\?code=", "", req$QUERY_STRING))
  if (req$PATH_INFO == "/eval") {
    out <- tryCatch(paste(capture.output(print(eval(parse(text = code), globalenv()))), collapse = "\n"),
                    error = function(e) paste("Error:", conditionMessage(e)))
    return(.standin$answer(out, "text/plain"))
  }
  if (req$PATH_INFO == "/run") {
    s$pending <- code
    assign("state", s, envir = .standin)
    return(.standin$answer("queued", "text/plain"))
  }
  .standin$answer(jsonlite::toJSON(list(
    resumed = s$resumed, forced = s$forced, variables = I(ls(globalenv())),
    r_version = paste(R.version$major, R.version$minor, sep = ".")), auto_unbox = TRUE))
})

.standin$main <- function() {
  httpuv::startServer(.standin$state$address, .standin$state$port, .standin$app)
  repeat {
    tryCatch(httpuv::service(50), interrupt = function(e) NULL)
    s <- .standin$state
    if (!is.null(s$pending)) {
      code <- s$pending
      s$pending <- NULL
      assign("state", s, envir = .standin)
      # busy: like R at the console, nothing else happens until this returns
      tryCatch(eval(parse(text = code), globalenv()), interrupt = function(e) NULL,
               error = function(e) NULL)
    }
    if (file.exists(file.path(s$flags, "force"))) .standin$suspend(TRUE)
    if (file.exists(file.path(s$flags, "suspend"))) .standin$suspend(FALSE)
  }
}
.standin$main()
