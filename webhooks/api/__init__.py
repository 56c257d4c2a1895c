"""The HTTP API: thin views that parse, call a service and dump."""
