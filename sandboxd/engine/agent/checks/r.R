# sandboxd's syntax check for R: Rscript main.R [args...], with R_PROFILE_USER naming this file.
#
# R reads the program one expression at a time and runs each as it goes, so the whole
# program is parsed here first, as R's user profile (before any of it runs): when that
# fails, "syntax" goes to the status pipe (fd 3, opened again by path: R has no descriptor
# I/O), the parser's message to stderr, and R quits. Otherwise the profile R would have
# read instead of this one (./.Rprofile, else ~/.Rprofile) is read now. R cannot close
# fd 3, so it stays open.
local({
  Sys.unsetenv("R_PROFILE_USER")
  arguments <- commandArgs()
  script <- sub("^--file=", "", arguments[startsWith(arguments, "--file=")][1])
  failure <- if (is.na(script)) NULL else tryCatch({
    parse(file = script, keep.source = FALSE)
    NULL
  }, error = function(error) error)
  if (!is.null(failure)) {
    status <- tryCatch(file("/proc/self/fd/3", "wb", raw = TRUE), error = function(error) NULL)
    if (!is.null(status)) {
      writeBin(charToRaw("syntax"), status)
      close(status)
    }
    cat("Error: ", conditionMessage(failure), "\nExecution halted\n", sep = "", file = stderr())
    quit(save = "no", status = 1, runLast = FALSE)
  }
  for (profile in c(".Rprofile", file.path(Sys.getenv("HOME"), ".Rprofile"))) {
    if (file.exists(profile)) {
      sys.source(profile, envir = globalenv())
      break
    }
  }
})
