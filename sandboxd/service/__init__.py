"""Executions as the API sees them: recorded in the store, owned by a key, admitted into bounded slots."""
