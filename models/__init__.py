"""The fleet's data: tables, states, formats, the session, and the node commands apps use."""
