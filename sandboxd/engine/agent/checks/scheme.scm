;;; sandboxd's syntax check for Scheme (Guile):
;;; guile --no-auto-compile -l <checks>/scheme.scm -s main.scm [args...].
;;;
;;; Guile reads the program one expression at a time and runs each as it goes, so the
;;; whole program is read here first (before any of it runs): when the reader fails,
;;; "syntax" goes to the status pipe (fd 3), Guile's message to stderr, and Guile exits.
;;; The pipe is closed before the program runs.
(let ((status (false-if-exception (fdopen 3 "w"))))
  (catch #t
    (lambda ()
      (call-with-input-file (car (command-line))
        (lambda (port)
          (let loop ()
            (unless (eof-object? (read port))
              (loop))))))
    (lambda (key . args)
      (when status
        (display "syntax" status)
        (close-port status))
      (print-exception (current-error-port) #f key args)
      (primitive-exit 1)))
  (when status
    (close-port status)))
