# sandboxd's syntax check for Elixir: elixir -r <checks>/elixir.exs main.exs [args...].
#
# Required before Elixir reads the program, so System.argv/0, __ENV__ and errors stay the
# program's own. Elixir parses a whole file before it runs any of it: the program is
# parsed here too, and when that fails, "syntax" goes to the status pipe (fd 3, opened
# again by path: the BEAM has no descriptor I/O for it) and Elixir goes on to read the
# program itself, which fails the same way before any of it runs: the message is
# Elixir's own. The BEAM cannot close fd 3, so it stays open.
with arguments = Enum.map(:init.get_plain_arguments(), &List.to_string/1),
     [_self, script | _] <- Enum.drop_while(arguments, &(Path.expand(&1) != __ENV__.file)),
     {:ok, source} <- File.read(script),
     {:error, _} <- Code.string_to_quoted(source, file: script, emit_warnings: false) do
  File.write("/proc/self/fd/3", "syntax")
end
