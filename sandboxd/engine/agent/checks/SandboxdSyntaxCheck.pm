# sandboxd's syntax check for Perl: perl -I<checks> -MSandboxdSyntaxCheck main.pl [args...].
#
# Perl compiles the whole program before it runs any of it (its BEGIN blocks and `use`
# aside, which run while it compiles, as under perl -c). When that compilation dies,
# b"syntax" goes to the status pipe (fd 3) and Perl reports its own message. Once it is
# done, before the program's first statement runs, the pipe is closed and @INC, %INC,
# $SIG{__DIE__} and $! are as if this module had never been loaded. (No strict or
# warnings here: loading them would show in the program's %INC.)
package SandboxdSyntaxCheck;

my $errno = $! + 0;
my $dir = $INC{'SandboxdSyntaxCheck.pm'} =~ s{/[^/]+\z}{}r;
@INC = grep { $_ ne $dir } @INC;
my $status;
open($status, '>&=', 3) or undef $status;    # by hand, without sandboxd's status pipe

$SIG{__DIE__} = sub {
    # $^S is undefined while the program is being compiled, false while it runs.
    if ($status && !defined $^S) {
        local $!;    # Perl's exit status after a die is $!
        syswrite($status, 'syntax');
        close($status);
        undef $status;
    }
};

INIT {
    close($status) if $status;
    delete $SIG{__DIE__};
    delete $INC{'SandboxdSyntaxCheck.pm'};
    $! = $errno;
}

$! = $errno;
1;
