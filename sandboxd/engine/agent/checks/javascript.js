// sandboxd's syntax check for Node.js: node --require javascript.js main.js [args...].
//
// Preloaded, so the program stays the main module (require.main === module) and its own
// errors keep their stacks. The program is compiled here as Node compiles a CommonJS
// module; when that fails with a SyntaxError, b"syntax" goes to the status pipe (fd 3) and
// Node goes on to compile the program itself, which fails the same way before any of it
// runs: the message is Node's own. The pipe is closed before the program could run.
// fd 3 must be that pipe (sandboxd gives it; by hand: 3>/dev/null): Node's own descriptors
// follow it, so closing a descriptor 3 that is not the pipe would break Node.
'use strict';
(() => {
  const fs = require('fs');
  const vm = require('vm');
  const STATUS_FD = 3;
  const self = __filename;
  // Processes the program forks do not load this file again (fd 3 is theirs there).
  for (let i = process.execArgv.length - 1; i >= 0; i--) {
    const arg = process.execArgv[i];
    if (arg === self && i > 0 && ['--require', '-r'].includes(process.execArgv[i - 1])) {
      process.execArgv.splice(i - 1, 2);
    } else if (arg === `--require=${self}` || arg === `-r=${self}`) {
      process.execArgv.splice(i, 1);
    }
  }
  const script = process.argv[1];
  try {
    if (script !== undefined) {
      const source = fs.readFileSync(script, 'utf8');
      vm.compileFunction(source, ['exports', 'require', 'module', '__filename', '__dirname'], { filename: script });
    }
  } catch (error) {
    if (!(error instanceof SyntaxError)) throw error;
    fs.writeSync(STATUS_FD, 'syntax');
  } finally {
    fs.closeSync(STATUS_FD);
  }
})();
