<?php
// sandboxd's syntax check for PHP: php -d auto_prepend_file=<checks>/php.php main.php [args...].
//
// Prepended to the program, so $argv, __FILE__ and errors stay its own. The program is
// parsed here (token_get_all with TOKEN_PARSE, PHP's own parser); when that fails,
// b"syntax" goes to the status pipe (fd 3) and PHP goes on to compile the program itself,
// which fails the same way before any of it runs: the message is PHP's own. PHP cannot
// close a descriptor it did not open (php://fd duplicates it), so fd 3 stays open.
(static function (): void {
    $status = @fopen('php://fd/3', 'w');
    try {
        token_get_all((string) file_get_contents($_SERVER['SCRIPT_FILENAME']), TOKEN_PARSE);
    } catch (ParseError) {
        if ($status !== false) {
            fwrite($status, 'syntax');
        }
    } finally {
        if ($status !== false) {
            fclose($status);
        }
    }
})();
