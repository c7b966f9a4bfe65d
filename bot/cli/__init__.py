"""The terminal front end: `qlora-bot train | ask | jobs | job | cancel | push | run`, a module a command."""
