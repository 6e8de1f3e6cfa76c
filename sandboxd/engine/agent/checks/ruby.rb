# sandboxd's syntax check for Ruby: ruby -r<checks>/ruby.rb main.rb [args...].
#
# Required before Ruby reads the program, so $0, ARGV, __FILE__ and backtraces stay the
# program's own. The program is compiled here; when that fails, b"syntax" goes to the
# status pipe (fd 3) and Ruby goes on to compile the program itself, which fails the same
# way before any of it runs: the message is Ruby's own. The pipe is closed either way.
# fd 3 must be that pipe (sandboxd gives it; by hand: 3>/dev/null): Ruby's own descriptors
# follow it, so closing a descriptor 3 that is not the pipe would break Ruby.
begin
  status = IO.for_fd(3, 'w', autoclose: true)
  verbose = $VERBOSE
  # Ruby prints the program's parse warnings when it compiles it itself: not twice.
  $VERBOSE = nil
  RubyVM::InstructionSequence.compile_file($0)
rescue SyntaxError
  status.syswrite('syntax')
ensure
  $VERBOSE = verbose
  status&.close
end
