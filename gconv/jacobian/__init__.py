"""gconv.jacobian — see the issue tracker; filled in by its issue."""
