"""Starting app processes: ports, environment, the child's protocol, readiness."""
