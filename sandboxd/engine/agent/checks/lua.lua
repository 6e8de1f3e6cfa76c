-- sandboxd's syntax check for Lua: lua5.4 -e "dofile'<checks>/lua.lua'" main.lua [args...].
--
-- Run before lua5.4 loads the program, so arg and errors stay its own. The program is
-- loaded (compiled, not run) here; when that fails, "syntax" goes to the status pipe
-- (fd 3, opened again by path: Lua has no descriptor I/O) and lua5.4 goes on to load the
-- program itself, which fails the same way before any of it runs: the message is Lua's
-- own. Lua cannot close fd 3, so it stays open.
local script = arg and arg[0]
if script and not loadfile(script) then
  local status = io.open("/proc/self/fd/3", "w")
  if status then
    status:write("syntax")
    status:close()
  end
end
