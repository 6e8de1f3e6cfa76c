;;;; sandboxd's syntax check for Common Lisp (SBCL): sbcl --noinform --disable-ldb
;;;; --lose-on-corruption --end-runtime-options --load <checks>/commonlisp.lisp --script main.lisp [args...].
;;;;
;;;; SBCL reads the program one form at a time and runs each as it goes, so the whole
;;;; program is read here first, with *read-suppress* (structure only: no symbol is interned,
;;;; no #. evaluated, no package needs to exist yet). When the reader fails, "syntax" goes
;;;; to the status pipe (fd 3), the condition to stderr, and SBCL exits; otherwise the pipe
;;;; is closed and the program runs. This file leaves no package and no symbol behind.
(setq sb-ext:*evaluator-mode* :interpret)  ; evaluated once: compiling it would cost more
(defpackage "SANDBOXD-CHECK" (:use "CL"))
(in-package "SANDBOXD-CHECK")
(let* ((command-line (with-open-file (in "/proc/self/cmdline")
                       (coerce (loop for char = (read-char in nil) while char collect char) 'string)))
       (words (loop for start = 0 then (1+ end)
                    for end = (position (code-char 0) command-line :start start)
                    while end collect (subseq command-line start end)))
       (script (second (member "--script" words :test #'string=))))
  (handler-case
      (with-open-file (in script :external-format :utf-8)
        (let ((line (read-line in nil "")))  ; a #! line, which load skips
          (unless (and (> (length line) 1) (string= "#!" line :end2 2))
            (file-position in 0)))
        (let ((*read-suppress* t))
          (loop until (eq (read in nil in) in))))
    (error (condition)
      (sb-unix:unix-write 3 (sb-ext:string-to-octets "syntax") 0 6)
      (format *error-output* "~&Unhandled ~S: ~A~%" (type-of condition) condition)
      (finish-output *error-output*)
      (sb-ext:exit :code 1 :abort t)))
  (sb-unix:unix-close 3))
(in-package "CL-USER")
(delete-package "SANDBOXD-CHECK")
(setq sb-ext:*evaluator-mode* :compile)
