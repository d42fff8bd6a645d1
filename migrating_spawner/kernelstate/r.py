"""Snapshot and restore of an IRkernel's global environment: R code run INSIDE the kernel.

One `saveRDS` per variable (so one bad variable never sinks the rest), named by its md5 so
an unchanged variable is not written again; the attached packages are re-attached. External
pointers and connections (files, sockets, DBI) would come back as dead handles, so they are
reported lost instead. IRkernel keeps its execution counter in its Executor object: it is
found on the call stack and set, so the next cell's number continues.
"""

from __future__ import annotations

import json

_COMMON = r"""
  .kp_executor <- function() {
    for (i in rev(seq_along(sys.frames()))) {
      fe <- environment(sys.function(i))
      if (!is.null(fe) && exists(".self", envir = fe, inherits = FALSE) &&
          methods::is(get(".self", envir = fe), "Executor")) return(fe)
    }
    NULL
  }
  .kp_json <- function(x, path) {
    tmp <- paste0(path, ".tmp")
    jsonlite::write_json(x, tmp, auto_unbox = TRUE, null = "null", digits = NA)
    file.rename(tmp, path)
    file.size(path)
  }
  .named <- function() structure(list(), names = character(0))
"""

_SNAPSHOT = r"""
local({
  d <- %(dir)s
  t0 <- proc.time()[["elapsed"]]
  %(common)s
  blobs <- file.path(d, "blobs")
  dir.create(blobs, recursive = TRUE, showWarnings = FALSE)
  env <- globalenv()
  vars <- .named(); entries <- .named(); written <- 0
  for (n in ls(env, all.names = TRUE)) {
    v <- get(n, envir = env)
    if (typeof(v) == "externalptr" || inherits(v, "connection") ||
        inherits(v, "DBIConnection")) {
      vars[[n]] <- list(how = "lost", bytes = 0,
                        reason = "an external pointer or connection cannot move")
      next
    }
    tmp <- tempfile(tmpdir = blobs)
    res <- tryCatch({ saveRDS(v, tmp, compress = FALSE); TRUE },
                    error = function(e) conditionMessage(e))
    if (!isTRUE(res)) {
      unlink(tmp)
      vars[[n]] <- list(how = "lost", bytes = 0, reason = res)
      next
    }
    h <- unname(tools::md5sum(tmp)); size <- file.size(tmp)
    dest <- file.path(blobs, paste0(h, ".rds"))
    if (file.exists(dest)) unlink(tmp) else { file.rename(tmp, dest); written <- written + size }
    entries[[n]] <- list(blob = h, bytes = size)
    vars[[n]] <- list(how = if (is.function(v)) "function" else "pickled", bytes = size)
  }
  ex <- .kp_executor()
  count <- if (is.null(ex)) 0L else get("execution_count", envir = ex) - 1L
  # the working folder even if it was deleted under the kernel; and where it is in the home,
  # whose path differs from host to host
  cwd <- tryCatch(getwd(), error = function(e) NULL)
  if (is.null(cwd)) cwd <- sub(" [(]deleted[)]$", "", Sys.readlink("/proc/self/cwd"))
  home <- path.expand("~")
  in_home <- if (cwd == home) "." else if (startsWith(cwd, paste0(home, "/")))
    substring(cwd, nchar(home) + 2L) else NULL
  index <- list(version = 1L, language = "R", entries = entries, execution_count = count,
                packages = rev(.packages()), cwd = cwd, cwd_in_home = in_home,
                time = as.numeric(Sys.time()),
                lost = lapply(Filter(function(x) x$how == "lost", vars), `[[`, "reason"))
  if (length(index$lost) == 0) index$lost <- .named()
  written <- written + .kp_json(index, file.path(d, "index.json"))
  keep <- paste0(vapply(entries, `[[`, "", "blob"), ".rds")
  old <- setdiff(list.files(blobs, pattern = "[.]rds$"), keep)
  unlink(file.path(blobs, old))
  .kp_json(list(ok = TRUE, variables = vars, execution_count = count,
                seconds = proc.time()[["elapsed"]] - t0, written_bytes = written),
           file.path(d, "snapshot-report.json"))
  invisible(NULL)
})
"""

_RESTORE = r"""
local({
  d <- %(dir)s
  t0 <- proc.time()[["elapsed"]]
  %(common)s
  index <- jsonlite::read_json(file.path(d, "index.json"))
  cwd <- index$cwd
  if (!is.null(index$cwd_in_home)) {
    cwd <- file.path(path.expand("~"), index$cwd_in_home)
    dir.create(cwd, recursive = TRUE, showWarnings = FALSE)
  }
  if (dir.exists(cwd)) setwd(cwd)
  lost <- if (length(index$lost)) index$lost else .named()
  for (p in unlist(index$packages)) {
    ok <- tryCatch({ suppressMessages(library(p, character.only = TRUE)); TRUE },
                   error = function(e) FALSE)
    if (!ok) lost[[paste0("package:", p)]] <- "the package is not installed here"
  }
  restored <- character(0)
  for (n in names(index$entries)) {
    e <- index$entries[[n]]
    res <- tryCatch({
      assign(n, readRDS(file.path(d, "blobs", paste0(e$blob, ".rds"))), envir = globalenv())
      TRUE
    }, error = function(err) conditionMessage(err))
    if (isTRUE(res)) restored <- c(restored, n) else lost[[n]] <- res
  }
  ex <- .kp_executor()
  if (!is.null(ex)) assign("execution_count", as.integer(index$execution_count) + 1L, envir = ex)
  .kp_json(list(ok = TRUE, restored = I(restored), replayed = I(character(0)), lost = lost,
                execution_count = index$execution_count, snapshot_time = index$time,
                seconds = proc.time()[["elapsed"]] - t0),
           file.path(d, "restore-report.json"))
  invisible(NULL)
})
"""


def _r_string(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid R string literal


def snapshot_code(state_dir: str) -> str:
    return _SNAPSHOT % {"dir": _r_string(state_dir), "common": _COMMON}


def restore_code(state_dir: str) -> str:
    return _RESTORE % {"dir": _r_string(state_dir), "common": _COMMON}
