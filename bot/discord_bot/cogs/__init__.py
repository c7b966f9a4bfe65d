"""One feature per cog: check permission, defer, call one service method, render the result."""
